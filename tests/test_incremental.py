"""Nightly means incremental: a run reuses, with no call and at no cost, every chunk whose
idempotency key already has a succeeded answer on the same output root, from a region the
chunk still allows; ``--full`` (``reuse.across_runs: false``) asks again.

Each test runs two "nights" over one root against the simulator; its request log is the
witness of what was paid for.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from pipeline.audit import audit
from pipeline.batches import drive
from pipeline.config import load_config
from pipeline.opening import Request, decide
from pipeline.run import Run
from pipeline.simulator import SimulatorServer
from pipeline.store import Store
from tests.test_batch_mode import config, corpus, provider, sha, stored


def night(path: Path, run_id: str, **overrides: Any) -> dict[str, Any]:
    """One run of ``path`` in this process, as the flow drives it (without Prefect)."""
    cfg = load_config(path, overrides=overrides)
    store = Store(cfg.output.root)
    opening = decide(store, cfg, Request(run_id=run_id))

    async def go() -> dict[str, Any]:
        async with Run.open(cfg, opening) as run:
            await drive(run.batches(), run.process_batch, run.parallel)
        return run.summary()

    return asyncio.run(go())


def sync_config(tmp_path: Path) -> Path:
    endpoints = [provider("sim-eu", "eu", "gpt-4.1-mini"), provider("sim-us", "us", "gpt-4.1-mini")]
    return config(tmp_path, endpoints, routing={"mode": "sync"})


def test_the_second_night_over_an_unchanged_corpus_makes_no_call(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    corpus(tmp_path / "corpus", {"eu": 4, "us": 3})
    path = sync_config(tmp_path)
    first = night(path, "n1")
    paid = len(sim_env.requests())
    assert first["succeeded"] == 7 and paid >= 7
    second = night(path, "n2")
    assert len(sim_env.requests()) == paid, "the second night called a provider"
    assert second["succeeded"] == 7 and second["reused"] == 7
    paid_usd = stored(tmp_path / "out", "SELECT sum(cost_usd) AS c FROM ledger WHERE run_id = 'n1'")
    assert second["reused_saved_usd"] == pytest.approx(paid_usd[0]["c"])
    reused = stored(
        tmp_path / "out", "SELECT reused_from, cost_usd FROM results WHERE run_id = 'n2'"
    )
    assert {(r["reused_from"], r["cost_usd"]) for r in reused} == {("n1", 0.0)}
    third = night(path, "n3")  # a reused answer is reused again, pointing at who paid for it
    assert third["succeeded"] == 7 and len(sim_env.requests()) == paid
    origins = stored(
        tmp_path / "out", "SELECT DISTINCT reused_from FROM results WHERE run_id = 'n3'"
    )
    assert origins == [{"reused_from": "n1"}]
    assert audit(Store(tmp_path / "out"), "n3").ok


def test_an_edited_document_resends_only_its_changed_chunk(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    corpus(tmp_path / "corpus", {"eu": 4})
    path = sync_config(tmp_path)
    night(path, "n1")
    before = len(sim_env.requests())
    edited = tmp_path / "corpus" / "eu" / "doc-002.txt"
    edited.write_text(edited.read_text().replace("Record", "Revised record"))
    night(path, "n2")
    sent = sim_env.requests()[before:]
    (text,) = [
        r["text"]
        for r in stored(tmp_path / "out", "SELECT path, text FROM chunks WHERE run_id = 'n2'")
        if r["path"] == "eu/doc-002.txt"
    ]
    assert "Revised record" in text
    assert {r.prompt_sha256 for r in sent} == {sha(text)}, "only the edited chunk was sent"
    rows = stored(
        tmp_path / "out",
        "SELECT path, reused_from FROM results WHERE run_id = 'n2' ORDER BY path",
    )
    assert [r["reused_from"] is None for r in rows] == [False, False, True, False]


def test_a_document_moved_from_us_to_eu_is_resent_to_an_eu_endpoint(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    """Same text, same key; but the answer was made in ``us`` and the chunk is EU-only now."""
    corpus(tmp_path / "corpus", {"us": 2})
    path = sync_config(tmp_path)
    night(path, "n1")
    before = len(sim_env.requests())
    (tmp_path / "corpus" / "eu").mkdir()
    moved = tmp_path / "corpus" / "us" / "doc-000.txt"
    moved.rename(tmp_path / "corpus" / "eu" / "doc-000.txt")
    night(path, "n2")
    sent = sim_env.requests()[before:]
    assert [r.endpoint for r in sent] == ["sim-eu"], "re-sent once, and only to the EU"
    rows = stored(
        tmp_path / "out", "SELECT path, region, reused_from FROM results WHERE run_id = 'n2'"
    )
    by_path = {r["path"]: r for r in rows}
    assert (
        by_path["eu/doc-000.txt"]["region"] == "eu"
        and by_path["eu/doc-000.txt"]["reused_from"] is None
    )
    assert by_path["us/doc-001.txt"]["reused_from"] == "n1"
    report = audit(Store(tmp_path / "out"), "n2")
    assert report.ok, report.text()
    (check,) = [c for c in report.checks if c.name == "reused_in_region"]
    assert check.detail == "1 reused answer(s), each made in a region its chunk allows"


def test_full_resends_every_chunk(tmp_path: Path, sim_env: SimulatorServer) -> None:
    corpus(tmp_path / "corpus", {"eu": 3})
    path = sync_config(tmp_path)
    night(path, "n1")
    before = len(sim_env.requests())
    second = night(path, "n2", **{"reuse.across_runs": False})
    assert len(sim_env.requests()) - before >= 3
    assert second["succeeded"] == 3
    reused = stored(
        tmp_path / "out", "SELECT count(reused_from) AS n FROM results WHERE run_id = 'n2'"
    )
    assert reused == [{"n": 0}]


def test_reuse_max_age_leaves_older_answers_alone(tmp_path: Path, sim_env: SimulatorServer) -> None:
    corpus(tmp_path / "corpus", {"eu": 2})
    path = sync_config(tmp_path)
    night(path, "n1")
    before = len(sim_env.requests())
    night(path, "n2", **{"reuse.max_age": "1s"})
    assert len(sim_env.requests()) == before, "answers a second old are reused"
    import time

    time.sleep(1.2)
    night(path, "n3", **{"reuse.max_age": "1s"})
    assert len(sim_env.requests()) - before >= 2, "older answers are asked for again"


@pytest.mark.usefixtures("prefect_harness")
def test_docroute_run_full_on_the_command_line(tmp_path: Path, sim_env: SimulatorServer) -> None:
    corpus(tmp_path / "corpus", {"eu": 2})
    path = sync_config(tmp_path)
    assert main(["run", "--config", str(path), "--run-id", "c1"]) == 0
    before = len(sim_env.requests())
    assert main(["run", "--config", str(path), "--run-id", "c2"]) == 0
    assert len(sim_env.requests()) == before
    assert main(["run", "--config", str(path), "--run-id", "c3", "--full"]) == 0
    assert len(sim_env.requests()) - before >= 2
