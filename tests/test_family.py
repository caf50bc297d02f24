"""Run families end to end: resume, Prefect retries, idempotent reuse, rerun filters and
``effective_results``. Real Prefect (test harness), real SDKs, simulator over loopback,
real Parquet and DuckDB; every assertion reads the stored data."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from flows.nightly import nightly_batch, rerun_failed
from pipeline.errors import ConfigError
from pipeline.run import Run
from pipeline.store import Store
from tests.conftest import sample_config_data, write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _one(store: Store, sql: str, *params: Any) -> Any:
    return store.read(sql, list(params)).rows[0][0]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _config(tmp_path: Path, *, budget: float = 0.5, batch_size: int = 250, **task: Any) -> Path:
    data = sample_config_data()
    data["budget"]["run_usd"] = budget
    data["routing"]["batch_size"] = batch_size
    data["task"].update(task)
    return write_config(tmp_path, data)


def _texts(store: Store, run_id: str, status: str = "succeeded") -> set[str]:
    rows = store.read(
        "SELECT c.text FROM results r JOIN chunks c USING (run_id, chunk_id) "
        "WHERE r.run_id = ? AND r.status = ?",
        [run_id, status],
    ).rows
    return {t for (t,) in rows}


def test_effective_results_after_two_reruns_holds_one_row_per_chunk(
    tmp_path: Path, sim_env: Any
) -> None:
    config = _config(tmp_path, budget=0.002)
    root = asyncio.run(nightly_batch(config_path=str(config)))["run_id"]
    store = Store(tmp_path / "out")
    chunks = _one(store, "SELECT count(*) FROM chunks WHERE run_id = ?", root)
    assert _one(store, "SELECT count(*) FROM results WHERE run_id = ? AND status='skipped'", root)

    first = asyncio.run(
        rerun_failed(parent_run_id=root, config_path=str(config), budget_usd=0.002)
    )["run_id"]
    second = asyncio.run(
        rerun_failed(parent_run_id=first, config_path=str(config), budget_usd=1.0)
    )["run_id"]

    rows = store.read(
        "SELECT chunk_id, status, run_id FROM effective_results WHERE family_id = ?", [root]
    ).rows
    assert len(rows) == chunks == len({r[0] for r in rows})
    by_run = {run for _, status, run in rows if status == "succeeded"}
    assert {root, second} <= by_run  # answers come from the run that produced them
    # Only the Swiss documents (no route by design) are left without an answer.
    left = store.read(
        "SELECT DISTINCT e.reason FROM effective_results e WHERE family_id = ? "
        "AND status <> 'succeeded'",
        [root],
    ).rows
    assert left == [("no_route",)]
    families = store.read(
        "SELECT DISTINCT family_id FROM runs WHERE run_id IN (?, ?, ?)", [root, first, second]
    ).rows
    assert families == [(root,)]


def test_rerun_of_succeeded_chunks_reuses_committed_answers_without_a_call(
    tmp_path: Path, sim_env: Any
) -> None:
    config = _config(tmp_path)
    root = asyncio.run(nightly_batch(config_path=str(config)))["run_id"]
    store = Store(tmp_path / "out")
    sim_env.reset()

    child = asyncio.run(
        rerun_failed(parent_run_id=root, config_path=str(config), statuses=["succeeded"])
    )
    cid = child["run_id"]
    assert child["succeeded"] == _one(
        store, "SELECT count(*) FROM results WHERE run_id = ? AND status = 'succeeded'", root
    )
    assert sim_env.requests() == []  # nothing was asked again
    assert _one(store, "SELECT count(*) FROM ledger WHERE run_id = ?", cid) == 0
    assert (
        _one(
            store,
            "SELECT count(*) FROM results c JOIN results p ON p.run_id = ? AND c.run_id = ? "
            "AND p.chunk_id = c.chunk_id WHERE c.reused_from = p.run_id AND c.output = p.output "
            "AND c.idem_key = p.idem_key AND c.cost_usd = 0",
            root,
            cid,
        )
        == child["succeeded"]
    )


def test_rerun_filters_by_reason_and_provider(tmp_path: Path, sim_env: Any) -> None:
    config = _config(tmp_path, budget=0.002)
    root = asyncio.run(nightly_batch(config_path=str(config)))["run_id"]
    store = Store(tmp_path / "out")

    by_reason = asyncio.run(
        rerun_failed(
            parent_run_id=root, config_path=str(config), reasons=["no_route"], budget_usd=1.0
        )
    )
    assert by_reason["chunks"] == _one(
        store, "SELECT count(*) FROM results WHERE run_id = ? AND reason = 'no_route'", root
    )
    assert by_reason["chunks"] > 0

    # --provider takes the chunks that had an attempt at that provider (here: failed there).
    tried = _one(
        store,
        "SELECT count(DISTINCT r.chunk_id) FROM results r JOIN ledger l USING (run_id, chunk_id) "
        "WHERE r.run_id = ? AND r.status IN ('failed', 'skipped') AND l.provider = 'llama-eu'",
        root,
    )
    by_provider = asyncio.run(
        rerun_failed(
            parent_run_id=root, config_path=str(config), providers=["llama-eu"], budget_usd=1.0
        )
    )
    assert by_provider["chunks"] == tried


def test_rerun_with_a_changed_prompt_is_refused_unless_forced(
    tmp_path: Path, sim_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, budget=0.002)
    root = asyncio.run(nightly_batch(config_path=str(config)))["run_id"]
    store = Store(tmp_path / "out")
    runs_before = _one(store, "SELECT count(*) FROM runs")

    args = ["rerun", root, "--config", str(config), "--set", "task.instructions=Be terse."]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "prompt version" in err and "--force" in err
    assert _one(store, "SELECT count(*) FROM runs") == runs_before  # nothing was started

    assert main([*args, "--force", "--budget", "1"]) == 0
    child = store.read("SELECT prompt_version FROM runs WHERE parent_run_id = ?", [root]).rows
    parent = _one(store, "SELECT prompt_version FROM runs WHERE run_id = ?", root)
    assert len(child) == 1 and child[0][0] != parent


def _batch_fails(monkeypatch: pytest.MonkeyPatch, nth: int, message: str) -> Any:
    """The ``nth`` batch of the process fails before dispatch (a storage error, say).

    Returns the original method, to put back (``monkeypatch.undo`` would also undo the
    fixtures' settings, such as the simulator's address).
    """
    original = Run.process_batch
    calls = {"n": 0}

    async def failing(self: Run, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == nth:
            raise OSError(message)
        return await original(self, batch)

    monkeypatch.setattr(Run, "process_batch", failing)
    return original


def test_resume_skips_committed_chunks_and_counts_spent_budget(
    tmp_path: Path, sim_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, batch_size=20)
    original = _batch_fails(monkeypatch, 3, "disk went away")
    with pytest.raises(Exception, match="disk went away"):
        asyncio.run(nightly_batch(config_path=str(config), run_id="r-1"))
    monkeypatch.setattr(Run, "process_batch", original)
    store = Store(tmp_path / "out")
    assert store.latest_run("r-1").status == "failed"  # type: ignore[union-attr]
    done_before = _texts(store, "r-1")
    spent_before = _one(store, "SELECT sum(cost_usd) FROM ledger WHERE run_id = 'r-1'")
    assert done_before and spent_before > 0
    sim_env.reset()

    assert main(["run", "--config", str(config), "--resume", "r-1"]) == 0

    record = store.latest_run("r-1")
    assert record is not None and record.status == "completed_with_failures"
    chunks = _one(store, "SELECT count(*) FROM chunks WHERE run_id = 'r-1'")
    assert _one(store, "SELECT count(DISTINCT chunk_id) FROM chunks WHERE run_id = 'r-1'") == chunks
    assert _one(store, "SELECT count(*) FROM results WHERE run_id = 'r-1'") == chunks
    assert record.chunks == chunks and record.succeeded == len(_texts(store, "r-1"))
    # No chunk committed before the crash was sent again, and the record's spend is the
    # ledger's total across both attempts.
    served = {r.prompt_sha256 for r in sim_env.requests()}
    assert served and not ({_sha(t) for t in done_before} & served)
    total = _one(store, "SELECT sum(cost_usd) FROM ledger WHERE run_id = 'r-1'")
    assert record.spend_usd == pytest.approx(total) and total > spent_before
    assert main(["audit", "r-1", "--root", str(tmp_path / "out")]) == 0


def test_resume_refuses_a_finished_run_and_a_changed_prompt(
    tmp_path: Path, sim_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    asyncio.run(nightly_batch(config_path=str(config), run_id="done-1"))
    with pytest.raises(ConfigError, match="already finished"):
        asyncio.run(nightly_batch(config_path=str(config), run_id="done-1", resume=True))
    with pytest.raises(ConfigError, match="already exists"):
        asyncio.run(nightly_batch(config_path=str(config), run_id="done-1"))

    config = _config(tmp_path, batch_size=20)
    original = _batch_fails(monkeypatch, 2, "disk went away")
    with pytest.raises(Exception, match="disk went away"):
        asyncio.run(nightly_batch(config_path=str(config), run_id="cut-1"))
    monkeypatch.setattr(Run, "process_batch", original)
    changed = _config(tmp_path, batch_size=20, instructions="Summarise in one line.")
    with pytest.raises(ConfigError, match="prompt version"):
        asyncio.run(nightly_batch(config_path=str(changed), run_id="cut-1", resume=True))
    done = asyncio.run(
        nightly_batch(config_path=str(changed), run_id="cut-1", resume=True, force=True)
    )
    assert done["status"] == "completed_with_failures"  # the Swiss chunks: no route


def test_a_prefect_retry_of_the_flow_run_resumes_the_same_run(
    tmp_path: Path, sim_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, batch_size=20)
    _batch_fails(monkeypatch, 2, "transient storage failure")
    retrying = nightly_batch.with_options(retries=1, retry_delay_seconds=0)
    summary = asyncio.run(retrying(config_path=str(config)))

    store = Store(tmp_path / "out")
    runs = store.read("SELECT run_id, status FROM runs").rows
    assert runs == [(summary["run_id"], "completed_with_failures")]  # one run, finished
    rid = summary["run_id"]
    chunks = _one(store, "SELECT count(*) FROM chunks WHERE run_id = ?", rid)
    assert _one(store, "SELECT count(DISTINCT chunk_id) FROM results WHERE run_id = ?", rid) == (
        _one(store, "SELECT count(*) FROM results WHERE run_id = ?", rid)
    )
    assert _one(store, "SELECT count(*) FROM results WHERE run_id = ?", rid) == chunks
    # The simulator's own count of tokens it served equals the ledger's (the oracle).
    tokens = store.read(
        "SELECT sum(input_tokens), sum(output_tokens) FROM ledger WHERE run_id = ?", [rid]
    ).rows[0]
    assert tokens == sim_env.tokens_served()


def test_the_idempotency_key_changes_with_what_makes_a_cascade_answer_good_enough(
    tmp_path: Path,
) -> None:
    """A stricter cascade must not reuse answers the looser one kept as confident enough."""
    from pipeline.config import load_config
    from pipeline.family import Versions
    from schemas import get_schema

    def key(name: str, cascade: dict[str, Any] | None) -> str:
        data = sample_config_data()
        data["routing"]["strategy"] = "cascade"
        if cascade is not None:
            data["routing"]["cascade"] = cascade
        (tmp_path / name).mkdir()
        cfg = load_config(write_config(tmp_path / name, data))
        return Versions.of(cfg, get_schema(cfg.task.schema_name)).key("the same text")

    loose = key("a", {"confidence_field": "confidence", "min_confidence": 0.5})
    strict = key("b", {"confidence_field": "confidence", "min_confidence": 0.9})
    other_field = key("c", {"confidence_field": "certainty", "min_confidence": 0.5})
    assert len({loose, strict, other_field, key("d", None)}) == 4
    assert key("e", {"confidence_field": "confidence", "min_confidence": 0.5}) == loose
