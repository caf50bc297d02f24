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
from pipeline.errors import ConfigError
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


def test_the_reuse_index_holds_one_row_per_paid_answer(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    """``answers`` indexes what a run paid for; a reusing run adds nothing to it."""
    corpus(tmp_path / "corpus", {"eu": 3})
    path = sync_config(tmp_path)
    night(path, "n1")
    night(path, "n2")
    rows = stored(
        tmp_path / "out",
        "SELECT a.run_id, count(*) AS n, sum(a.cost_usd) = sum(r.cost_usd) AS same_cost "
        "FROM answers a JOIN results r USING (run_id, idem_key) GROUP BY 1",
    )
    assert rows == [{"run_id": "n1", "n": 3, "same_cost": True}]


def test_max_age_counts_from_when_the_answer_was_made(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    """An answer reused last night is as old as the night that paid for it."""
    import time

    from pipeline.family import ReuseIndex

    corpus(tmp_path / "corpus", {"eu": 2})
    path = sync_config(tmp_path)
    night(path, "n1")
    between = time.time()
    night(path, "n2")  # reuses n1's answers: its results rows are newer than ``between``
    store = Store(tmp_path / "out")
    assert len(ReuseIndex.load(store, "n3", across_runs=True)) == 2
    assert len(ReuseIndex.load(store, "n3", across_runs=True, since=between)) == 0


def test_since_run_id_reuses_only_answers_made_since_that_run(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    corpus(tmp_path / "corpus", {"eu": 2})
    path = sync_config(tmp_path)
    night(path, "n1")
    edited = tmp_path / "corpus" / "eu" / "doc-001.txt"
    edited.write_text(edited.read_text().replace("Record", "Revised record"))
    night(path, "n2")  # pays for doc-001's new text only
    before = len(sim_env.requests())
    night(path, "n3", **{"reuse.since": "n2"})
    sent = sim_env.requests()[before:]
    text = stored(
        tmp_path / "out", "SELECT text FROM chunks WHERE run_id = 'n3' AND path = 'eu/doc-000.txt'"
    )[0]["text"]
    assert {r.prompt_sha256 for r in sent} == {sha(text)}, "n1's answer is older than n2"
    with pytest.raises(ConfigError, match=r"reuse\.since: run 'nope' not found"):
        night(path, "n4", **{"reuse.since": "nope"})


def test_a_resumed_full_run_stays_full(tmp_path: Path, sim_env: SimulatorServer) -> None:
    """``--full`` is recorded with the run: resuming it (without the flag) asks again."""
    corpus(tmp_path / "corpus", {"eu": 4})
    path = sync_config(tmp_path)
    night(path, "n1")
    before = len(sim_env.requests())
    cfg = load_config(path, overrides={"reuse.across_runs": False, "routing.batch_size": 2})
    store = Store(cfg.output.root)
    opening = decide(store, cfg, Request(run_id="n2"))

    async def first_batch_only() -> None:
        async with Run.open(cfg, opening) as run:
            batch = next(iter(run.batches()))
            await run.process_batch(batch)
            raise KeyboardInterrupt  # stopped after one batch: the run is interrupted

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(first_batch_only())
    assert len(sim_env.requests()) - before == 2
    resumed = load_config(path)  # tonight's config says reuse across runs
    opening = decide(Store(resumed.output.root), resumed, Request(resume="n2"))

    async def rest() -> dict[str, Any]:
        async with Run.open(resumed, opening) as run:
            await drive(run.batches(), run.process_batch, run.parallel)
        return run.summary()

    summary = asyncio.run(rest())
    assert summary["reused"] == 0 and len(sim_env.requests()) - before == 4


def test_an_older_root_gets_its_reuse_index_built(tmp_path: Path, sim_env: SimulatorServer) -> None:
    """A root written before the ``answers`` index: its migration indexes the results."""
    import json
    import shutil

    corpus(tmp_path / "corpus", {"eu": 3})
    path = sync_config(tmp_path)
    night(path, "n1")
    out = tmp_path / "out"
    shutil.rmtree(out / "answers")  # as an older docroute left it
    state = json.loads((out / "_catalog.json").read_text())
    state["migrations"].remove("0005_answers_index")
    (out / "_catalog.json").write_text(json.dumps(state))
    before = len(sim_env.requests())
    second = night(path, "n2")
    assert len(sim_env.requests()) == before and second["reused"] == 3
    assert stored(out, "SELECT count(*) AS n FROM answers") == [{"n": 3}]


def test_a_deleted_document_is_reported_once_and_gone_from_tonights_results(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    from flows.summary import format_summary, summary_markdown

    corpus(tmp_path / "corpus", {"eu": 3})
    path = sync_config(tmp_path)
    night(path, "n1")
    (tmp_path / "corpus" / "eu" / "doc-001.txt").unlink()
    second = night(path, "n2")
    assert second["deleted"] == 1 and second["deleted_paths"] == ["eu/doc-001.txt"]
    assert second["documents"] == 2, "a deleted document is not one of tonight's documents"
    second["status"] = "succeeded"
    assert "deleted    1 document(s) of the last full run gone from the corpus: eu/doc-001.txt" in (
        format_summary(second, path)
    )
    assert "Deleted: 1 document(s)" in summary_markdown(second)
    out = tmp_path / "out"
    rows = stored(out, "SELECT path, status, reason FROM documents WHERE run_id = 'n2' ORDER BY 1")
    assert [(r["path"], r["status"]) for r in rows] == [
        ("eu/doc-000.txt", "ok"),
        ("eu/doc-001.txt", "deleted"),
        ("eu/doc-002.txt", "ok"),
    ]
    tonight = stored(out, "SELECT path FROM effective_results WHERE family_id = 'n2' ORDER BY 1")
    assert [r["path"] for r in tonight] == ["eu/doc-000.txt", "eu/doc-002.txt"]
    third = night(path, "n3")  # gone since n1: n2 reported it, n3 has nothing to report
    assert third["deleted"] == 0
    assert audit(Store(out), "n2").ok


def test_plan_counts_the_changes_and_prices_only_what_will_be_sent(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    from pipeline.plan import make_plan, render_plan

    corpus(tmp_path / "corpus", {"eu": 4})
    path = sync_config(tmp_path)
    night(path, "n1")
    folder = tmp_path / "corpus" / "eu"
    edited = folder / "doc-001.txt"
    edited.write_text(edited.read_text().replace("Record", "Revised record"))
    (folder / "doc-002.txt").unlink()
    (folder / "doc-new.txt").write_text("A new record. " + "word " * 50)
    plan = make_plan(load_config(path))
    c = plan.changes
    assert (c.since_run_id, c.new, c.changed, c.unchanged, c.deleted) == ("n1", 1, 1, 2, 1)
    assert c.deleted_paths == ["eu/doc-002.txt"]
    assert plan.chunks == 4 and plan.reused_chunks == 2 and plan.total.chunks == 2
    table = render_plan(plan, "table")
    assert "since run n1: 1 new · 1 changed · 2 unchanged · 1 deleted" in table
    assert "4 (2 reused, 2 to send, 0 with no route)" in table
    full = make_plan(load_config(path, overrides={"reuse.across_runs": False}))
    assert full.reused_chunks == 0 and full.total.chunks == 4
    assert full.total.cost_usd > plan.total.cost_usd > 0
    before = len(sim_env.requests())
    night(path, "n2")
    assert len(sim_env.requests()) - before == plan.total.chunks, "the plan priced what was sent"
