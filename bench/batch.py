"""Batch-jobs benchmark: what ``routing.mode: auto`` costs against all-sync, and a deadline
too short for the jobs.

    .venv/bin/python bench/batch.py                    # every scenario (about 2 minutes)
    .venv/bin/python bench/batch.py --chunks 3000

Each scenario writes the same corpus (``--chunks`` one-chunk documents from the sample
corpus's text, half under ``eu/``, half under ``us/``) and runs docroute's whole path on it
(``pipeline.run``, as the flow wires it, without Prefect) against ``SimulatorProcess`` on
127.0.0.1, with the sample config's endpoints, prices and simulated faults (429s, 503s,
invalid answers), without its RPM/TPM quotas (under them the sync run alone takes most of
an hour). It prints one JSON object per scenario:

- ``sync``: ``routing.mode: sync``, the baseline;
- ``auto_generous``: ``auto`` with a 30-minute deadline and jobs that take 4 s: cost
  against ``sync`` at the same succeeded count (goal: at most 52%);
- ``auto_short``: ``auto`` with a deadline of 1.5 times what ``sync`` took (at least a
  minute) and jobs that would take 1.2 times the deadline (a cancel takes a tenth of that
  in the simulator): the jobs are cancelled at the fallback
  moment, what they did is kept and the rest is done sync; whether it finished before the
  deadline, the cap held, and nothing was billed twice (one ledger row per request the
  simulator answered, every attempt id once).

The sample's ``llama-eu`` (a self-hosted model, cheaper sync than any batch job) takes no
batch jobs, so ``auto`` sends its EU chunks to it sync, as ``sync`` does; ``--batchable-only``
leaves it out, so that every chunk can go in a job. Every run is bounded by the corpus
size and its deadline and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.audit import audit  # noqa: E402
from pipeline.batches import drive  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.opening import Opening, new_run_id  # noqa: E402
from pipeline.run import Run  # noqa: E402
from pipeline.simulator import SimulatorProcess  # noqa: E402
from pipeline.store import Store  # noqa: E402


def make_corpus(folder: Path, chunks: int, words_per_doc: int = 300) -> None:
    source = " ".join(
        p.read_text(encoding="utf-8") for p in sorted((REPO / "examples" / "corpus").rglob("*.*"))
    ).split()
    for i in range(chunks):
        sub = folder / ("eu" if i % 2 == 0 else "us")
        sub.mkdir(parents=True, exist_ok=True)
        start = (i * 97) % max(len(source) - words_per_doc, 1)
        body = " ".join(source[start : start + words_per_doc])
        (sub / f"doc-{i:06d}.txt").write_text(f"Document {i}.\n\n{body}\n", encoding="utf-8")


def config_for(
    corpus: Path, out: Path, *, mode: str, turnaround_s: float, within: str | None,
    batchable_only: bool,
) -> Config:  # fmt: skip
    data: dict[str, Any] = yaml.safe_load((REPO / "examples" / "docroute.yaml").read_text())
    providers = [p for p in data["providers"] if not (batchable_only and p["name"] == "llama-eu")]
    for p in providers:
        p.pop("rate_limits", None)  # the sample's quotas would make this bench take an hour
        p["simulate"] = "always"
        p.setdefault("simulator", {})["batch_turnaround_s"] = turnaround_s
    data["providers"] = providers
    data["corpus"] = {
        "path": str(corpus),
        "residency": [
            {"match": "eu/**", "regions": ["eu"]},
            {"match": "us/**", "regions": ["us"]},
        ],
        "residency_default": "deny",
    }
    data["budget"] = {"run_usd": 50.0}
    data["routing"] |= {
        "mode": mode, "batch_size": 500, "parallel_batches": 2, "batch_poll_s": 0.5,
        "batch_poll_max_s": 2.0,
    }  # fmt: skip
    data["schedule"] = {"finish_within": within} if within else {}
    data["output"] = {"root": str(out)}
    return Config.model_validate(data)


def run(cfg: Config, sim: SimulatorProcess) -> dict[str, Any]:
    sim.reset()
    run_id = new_run_id()
    started = time.time()

    async def go() -> Run:
        async with Run.open(cfg, Opening.new(run_id, flow="bench")) as r:
            await drive(r.batches(), r.process_batch, r.parallel)
        return r

    r = asyncio.run(go())
    finished = time.time()
    deadline = cfg.schedule.deadline_after(r.started_at)
    store = Store(cfg.output.root)
    s = r.summary()
    ledger = store.read(
        "SELECT count(*) FILTER (WHERE mode = 'batch' AND outcome NOT IN "
        "('batch_unfinished', 'uncertain')), "
        "count(*) FILTER (WHERE mode = 'sync' AND provider IS NOT NULL), "
        "count(DISTINCT attempt_id) = count(*), coalesce(sum(cost_usd), 0), "
        "count(*) FILTER (WHERE provider IS NOT NULL AND outcome <> 'batch_unfinished') "
        "FROM ledger "
        "WHERE run_id = ?",
        [run_id],
    ).rows[0]
    return {
        "seconds": round(finished - started, 1),
        "chunks": s["chunks"],
        "succeeded": s["succeeded"],
        "cost_usd": round(float(ledger[3]), 6),
        "batch": {k: round(v, 6) if isinstance(v, float) else v for k, v in s["batch"].items()},
        "batch_rows_answered": ledger[0],
        "sync_calls": ledger[1],
        "attempt_ids_unique": bool(ledger[2]),
        # every request the simulator answered has one ledger row, and no more
        "ledger_rows_equal_requests_served": ledger[4] == len(sim.requests()),
        "deadline_met": None if deadline is None else finished < deadline,
        "cap_held": float(ledger[3]) <= cfg.budget.run_usd,
        "audit_pass": audit(store, run_id).ok,
        "run_id": run_id,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--batchable-only", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="docroute-bench-batch-"))
    try:
        make_corpus(tmp / "corpus", args.chunks)
        with SimulatorProcess() as sim:
            os.environ["DOCROUTE_SIMULATOR_URL"] = sim.url
            scenarios: dict[str, dict[str, Any]] = {
                "sync": dict(mode="sync", turnaround_s=4.0, within=None),
                "auto_generous": dict(mode="auto", turnaround_s=4.0, within="30m"),
            }
            figures: dict[str, dict[str, Any]] = {}
            for name in ("sync", "auto_generous", "auto_short"):
                if name == "auto_short":  # time for sync calls, none for the jobs to finish
                    within = max(60, round(1.5 * figures["sync"]["seconds"]))
                    scenarios[name] = dict(
                        mode="auto", turnaround_s=1.2 * within, within=f"{within}s"
                    )
                kw = scenarios[name]
                cfg = config_for(
                    tmp / "corpus", tmp / name, batchable_only=args.batchable_only, **kw
                )
                figures[name] = run(cfg, sim) | {"scenario": name, **kw}
                if name != "sync":
                    base = figures["sync"]
                    same = figures[name]["succeeded"] == base["succeeded"]
                    share = figures[name]["cost_usd"] / base["cost_usd"] if base["cost_usd"] else 0
                    figures[name] |= {"cost_share_of_sync": round(share, 4), "same_succeeded": same}
                print(json.dumps(figures[name]), flush=True)
    finally:
        os.environ.pop("DOCROUTE_SIMULATOR_URL", None)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
