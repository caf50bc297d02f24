"""Crash safety: a run killed with SIGKILL mid-batch loses at most the calls in flight; every
completed call's cost reaches the ledger (journal + recovery), exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.models import LedgerEntry
from pipeline.simulator import EndpointProfile, SimulatorProcess
from pipeline.store import Store
from pipeline.store.journal import JOURNAL_DIR, Journal, read_entries, recover
from tests.conftest import EXAMPLES, REPO

CONCURRENCY = 8

RUNNER = """
import asyncio, sys
from pipeline.config import load_config
from pipeline.run import Run, drive
async def main():
    cfg = load_config(sys.argv[1])
    async with Run.open(cfg, run_id=sys.argv[2], flow="crash-test") as run:
        await drive(run.batches(run.corpus_chunks()), run.process_batch, 1)
asyncio.run(main())
"""


def _corpus(folder: Path, n: int) -> None:
    words = " ".join(
        p.read_text() for p in sorted((EXAMPLES / "corpus" / "eu").rglob("*.*"))
    ).split()
    folder.mkdir(parents=True)
    for i in range(n):
        body = " ".join(words[i * 37 % 5000 : i * 37 % 5000 + 120])
        (folder / f"doc-{i:04d}.txt").write_text(f"Record {i}. {body}\n")


def _config(tmp: Path) -> Path:
    import yaml

    data = {
        "corpus": {"path": str(tmp / "corpus"), "residency_default": ["eu"]},
        "task": {"schema": "chunk_summary", "max_output_tokens": 600},
        "budget": {"run_usd": 100},
        "routing": {"concurrency": CONCURRENCY, "batch_size": 10_000},  # one batch: no part
        "providers": [
            {
                "name": "sim-eu",
                "kind": "openai",
                "region": "eu",
                "simulate": "always",
                "models": [{"id": "gpt-4.1-mini"}],
            }
        ],
        "output": {"root": str(tmp / "out")},
    }
    path = tmp / "docroute.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _journal_lines(root: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (root / JOURNAL_DIR).glob("*/*.jsonl"))


def test_kill_9_mid_batch_loses_only_calls_in_flight(tmp_path: Path) -> None:
    _corpus(tmp_path / "corpus", 400)
    config = _config(tmp_path)
    root = tmp_path / "out"
    rng = random.Random(20261121)
    profile = EndpointProfile(latency_ms=(40, 120))
    with SimulatorProcess({"sim-eu": profile}) as sim:
        env = os.environ | {"DOCROUTE_SIMULATOR_URL": sim.url, "PYTHONPATH": str(REPO)}
        for kill_point in range(3):
            sim.reset()
            run_id = f"crash-{kill_point}"
            proc = subprocess.Popen(
                [sys.executable, "-c", RUNNER, str(config), run_id],
                cwd=REPO,
                env=env,
                stderr=subprocess.PIPE,
            )
            wanted = rng.randint(10, 60)  # completed calls before the kill
            deadline = time.monotonic() + 60
            while _journal_lines(root) < wanted and time.monotonic() < deadline:
                assert proc.poll() is None, (
                    proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                )
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

            store = Store(root)
            assert store.read("SELECT count(*) FROM results WHERE run_id = ?", [run_id]).rows == [
                (0,)
            ]
            assert store.read("SELECT count(*) FROM ledger WHERE run_id = ?", [run_id]).rows == [
                (0,)
            ]
            recovered = recover(store)
            ledger = store.read(
                "SELECT count(*), sum(input_tokens), sum(output_tokens), "
                "count(DISTINCT attempt_id) FROM ledger WHERE run_id = ? AND outcome = 'ok'",
                [run_id],
            ).rows[0]
            answered = [r for r in sim.requests("sim-eu") if r.status == 200]
            served = (
                sum(r.prompt_tokens for r in answered),
                sum(r.completion_tokens for r in answered),
            )
            n_ok, in_tok, out_tok, distinct = ledger
            assert recovered >= wanted and n_ok == distinct, "each completed call once"
            # Everything the provider answered is ledgered, except calls still in flight.
            assert 0 <= len(answered) - n_ok <= CONCURRENCY
            assert in_tok <= served[0] and out_tok <= served[1]
            assert recover(store) == 0, "recovery is idempotent"


def _entry(i: int) -> LedgerEntry:
    return LedgerEntry(
        run_id="r1",
        chunk_id=f"c{i}",
        attempt=1,
        provider="p",
        model="m",
        region="eu",
        mode="sync",
        started_at=0.0,
        latency_ms=1.0,
        input_tokens=10,
        output_tokens=5,
        cached_input_tokens=0,
        cache_write_tokens=0,
        cost_usd=0.01,
        reserved_usd=0.02,
        outcome="ok",
        http_status=200,
        error=None,
        attempt_id=f"a{i}",
    )


def test_a_crash_between_part_and_journal_removal_is_not_counted_twice(tmp_path: Path) -> None:
    store = Store(tmp_path)
    journal = Journal.open(store.root, "r1", "r1/b00001")
    for i in range(5):
        journal.append(_entry(i))
    store.write_rows("ledger", "r1", [_entry(i) for i in range(3)])  # part written, then "crash"
    journal.close()
    assert recover(store) == 2
    rows = store.read("SELECT count(*), sum(cost_usd) FROM ledger WHERE run_id = 'r1'").rows[0]
    assert rows[0] == 5 and rows[1] == pytest.approx(0.05)


def test_a_live_journal_is_left_alone_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    store = Store(tmp_path)
    live = Journal.open(store.root, "r1", "r1/b00001")
    live.append(_entry(0))
    assert recover(store) == 0, "a writer holds it"
    live.close()
    with live.path.open("a") as f:
        f.write('{"run_id": "r1", "chunk_id": "c9", "attem')  # killed mid-write
    assert [e.attempt_id for e in read_entries(live.path)] == ["a0"]
    assert recover(store) == 1


def test_journal_lines_are_whole_json(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, "r1", "r1/b1")
    journal.append(_entry(1))
    journal.close()
    (line,) = journal.path.read_text().splitlines()
    assert json.loads(line)["attempt_id"] == "a1"
