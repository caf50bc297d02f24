"""Dispatch benchmark: the whole path against simulated providers in a separate process.

    .venv/bin/python bench/dispatch.py                  # all scenarios (about 5 minutes)
    .venv/bin/python bench/dispatch.py throughput       # one scenario
    .venv/bin/python bench/dispatch.py saturation --seconds 60

Each scenario writes a corpus to a temporary folder, then runs docroute's whole path on it
(discover → chunk → route → reserve → call → validate → ledger → Parquet parts) through
``pipeline.run`` (the stages the Prefect flow wires, without the Prefect task overhead of
a few ms per batch), against ``SimulatorProcess`` on 127.0.0.1. It prints one JSON object
per scenario:

- ``throughput``: zero latency, no quota; chunks/s and CPU ms per chunk of this process.
- ``saturation``: one endpoint limited to 600 RPM / 200k TPM with 200–800 ms latency; the
  share of the binding limit achieved and the share of requests that got 429.
- ``saturation_faulty``: the same with two endpoints at once, each failing 20% of calls.

Every load loop is bounded by chunk count and wall time and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.batches import drive  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.opening import Opening, new_run_id  # noqa: E402
from pipeline.run import Run  # noqa: E402
from pipeline.simulator import EndpointProfile, SimulatorProcess  # noqa: E402

KEY_ENV = "DOCROUTE_BENCH_KEY"
MAX_OUTPUT = 1000  # the simulator's answers to 450-word documents reach ~650 tokens


def make_corpus(folder: Path, chunks: int, words_per_doc: int = 450) -> None:
    """``chunks`` one-chunk documents of real English from the sample corpus, each unique."""
    source = " ".join(
        p.read_text(encoding="utf-8") for p in sorted((REPO / "examples" / "corpus").rglob("*.*"))
    ).split()
    folder.mkdir(parents=True)
    for i in range(chunks):
        start = (i * 97) % max(len(source) - words_per_doc, 1)
        body = " ".join(source[start : start + words_per_doc])
        (folder / f"doc-{i:06d}.txt").write_text(f"Document {i}.\n\n{body}\n", encoding="utf-8")


def config_for(
    corpus: Path,
    out: Path,
    sim: SimulatorProcess,
    names: list[str],
    routing: dict[str, Any],
    limits: dict[str, Any],
) -> Config:
    providers = [
        {
            "name": name,
            "kind": "openai",
            "region": "eu",
            "base_url": sim.base_url(name),
            "api_key_env": KEY_ENV,
            "simulate": "never",
            "models": [{"id": "gpt-4.1-mini"}],
            "rate_limits": limits,
        }
        for name in names
    ]
    return Config.model_validate(
        {
            "corpus": {"path": str(corpus), "residency_default": ["eu"]},
            "task": {"schema": "chunk_summary", "max_output_tokens": MAX_OUTPUT},
            # count as the simulator does (chars/4), as a real run counts with tiktoken
            "chunking": {"max_tokens": 800, "overlap_tokens": 0, "counter": "chars/4"},
            "budget": {"run_usd": 10_000},
            "routing": {"max_attempts": 8, "backoff_initial_s": 0.2, **routing},
            "providers": providers,
            "output": {"root": str(out)},
        }
    )


async def run_path(cfg: Config, deadline_s: float) -> dict[str, Any]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with Run.open(cfg, Opening.new(new_run_id(), flow="bench")) as run:
        try:
            await asyncio.wait_for(
                drive(
                    run.batches(),
                    run.process_batch,
                    cfg.routing.parallel_batches,
                ),
                timeout=deadline_s,
            )
            finished = True
        except TimeoutError:
            finished = False
        p = run.progress
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "finished": finished,
        "wall_s": wall,
        "cpu_s": cpu,
        "chunks": p.chunks,
        "succeeded": p.succeeded,
        "failed": p.failed,
        "skipped": p.skipped,
    }


def throughput(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n = args.chunks
    make_corpus(tmp / "corpus", n)
    profiles = {"fast": EndpointProfile()}
    with SimulatorProcess(profiles) as sim:
        cfg = config_for(
            tmp / "corpus",
            tmp / "out",
            sim,
            ["fast"],
            {"concurrency": 32, "batch_size": 1000, "parallel_batches": 2},
            {},
        )
        r = asyncio.run(run_path(cfg, args.deadline))
    return {
        "scenario": "throughput",
        "chunks": r["chunks"],
        "succeeded": r["succeeded"],
        "wall_s": round(r["wall_s"], 2),
        "chunks_per_s": round(r["chunks"] / r["wall_s"], 1),
        "cpu_ms_per_chunk": round(1000 * r["cpu_s"] / max(r["chunks"], 1), 3),
        "chunks_per_cpu_s": round(r["chunks"] / r["cpu_s"], 1),
        "note": "docroute process only; simulator runs in its own process",
    }


def saturation(args: argparse.Namespace, tmp: Path, faulty: bool) -> dict[str, Any]:
    rpm, tpm = 600, 200_000
    names = ["eu-a", "eu-b"] if faulty else ["eu-a"]
    fault = {"rate_500": 0.1, "invalid_rate": 0.1} if faulty else {}
    profiles = {
        name: EndpointProfile(latency_ms=(200, 800), rpm=rpm, tpm=tpm, seed=i, **fault)
        for i, name in enumerate(names)
    }
    # Enough chunks to keep the quota busy for the whole measured window and a bit more.
    per_minute = tpm / (800 + MAX_OUTPUT)
    n = int(per_minute * len(names) * (args.seconds / 60) * 1.3) + 50
    make_corpus(tmp / "corpus", n)
    with SimulatorProcess(profiles) as sim:
        cfg = config_for(
            tmp / "corpus",
            tmp / "out",
            sim,
            names,
            {"concurrency": 64, "batch_size": 100, "parallel_batches": 3},
            {"rpm": rpm, "tpm": tpm},
        )
        started = time.time()
        r = asyncio.run(run_path(cfg, args.seconds))
        ended = time.time()
        records = sim.requests()
    window = [x for x in records if started <= x.received_at <= ended]
    minutes = (ended - started) / 60
    out: dict[str, Any] = {
        "scenario": "saturation_faulty" if faulty else "saturation",
        "endpoints": len(names),
        "rpm": rpm,
        "tpm": tpm,
        "fault_rate": 0.2 if faulty else 0.0,
        "measured_s": round(ended - started, 1),
        "chunks_done": r["chunks"],
    }
    per_endpoint = {}
    for name in names:
        mine = [x for x in window if x.endpoint == name]
        admitted = [x for x in mine if x.fault != "rate_limited"]
        tokens = sum(x.prompt_tokens + MAX_OUTPUT for x in admitted)
        rpm_share = len(admitted) / (rpm * minutes)
        tpm_share = tokens / (tpm * minutes)
        per_endpoint[name] = {
            "requests": len(mine),
            "requests_per_min": round(len(admitted) / minutes, 1),
            "tokens_per_min": round(tokens / minutes),
            "binding": "tpm" if tpm_share >= rpm_share else "rpm",
            "share_of_binding_limit": round(max(rpm_share, tpm_share), 4),
            "share_429": round(sum(x.fault == "rate_limited" for x in mine) / max(len(mine), 1), 4),
        }
    out["per_endpoint"] = per_endpoint
    return out


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scenarios = ["throughput", "saturation", "saturation_faulty"]
    # (no argparse choices: Python 3.11 rejects an empty nargs="*" list against them)
    parser.add_argument("scenario", nargs="*", help=f"any of {', '.join(scenarios)}; default all")
    parser.add_argument("--chunks", type=int, default=4000, help="throughput: chunks to run")
    parser.add_argument("--seconds", type=float, default=120, help="saturation: measured seconds")
    parser.add_argument("--deadline", type=float, default=300, help="hard stop per scenario (s)")
    args = parser.parse_args()
    unknown = [name for name in args.scenario if name not in scenarios]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; expected one of: {', '.join(scenarios)}")
    os.environ[KEY_ENV] = "bench-not-a-real-key"
    print(json.dumps({"machine": machine()}), flush=True)
    for name in args.scenario or scenarios:
        tmp = Path(tempfile.mkdtemp(prefix=f"docroute-bench-{name}-"))
        try:
            if name == "throughput":
                result = throughput(args, tmp)
            else:
                result = saturation(args, tmp, faulty=name == "saturation_faulty")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
