"""Storage housekeeping: compaction without a window, damaged parts, named migrations,
the run lock, and ``docroute audit`` catching each kind of breach. Real Parquet and DuckDB."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipeline.audit import audit
from pipeline.models import Chunk, LedgerEntry, Result
from pipeline.store import PriceRow, RunRecord, Store, compaction
from pipeline.store.journal import RunBusyError, RunLock, recover
from pipeline.store.migrations import MIGRATIONS, STATE_FILE, NewerRootError, applied
from pipeline.store.tables import SCHEMAS

T0 = 1_790_000_000.0


def _chunk(i: int, run_id: str = "r1", regions: tuple[str, ...] = ("eu",)) -> dict[str, object]:
    c = Chunk(
        chunk_id=f"c{i}",
        doc_id="d1",
        path="eu/a.txt",
        index=i,
        char_start=i,
        char_end=i + 1,
        token_estimate=1,
        text=f"t{i}",
        regions=regions,
        residency_rule="eu/**",
    )
    return dataclasses.asdict(c) | {"run_id": run_id, "regions": list(regions)}


def _result(i: int, run_id: str = "r1", status: str = "succeeded") -> Result:
    return Result(
        run_id=run_id,
        chunk_id=f"c{i}",
        doc_id="d1",
        path="eu/a.txt",
        status=status,  # type: ignore[arg-type]
        reason=None if status == "succeeded" else "budget_exhausted",
        output='{"x": 1}' if status == "succeeded" else None,
        provider="p-eu",
        model="m",
        region="eu",
        attempts=1,
        cost_usd=0.0,
        finished_at=T0 + i,
        schema_name="chunk_summary",
    )


def _ledger(i: int, run_id: str = "r1", region: str = "eu", cost: float = 0.0003) -> LedgerEntry:
    # 1000 input + 250 output tokens at $0.1 / $0.8 per Mtok = $0.0003
    return LedgerEntry(
        run_id=run_id,
        chunk_id=f"c{i}",
        attempt=1,
        provider="p-eu",
        model="m",
        region=region,
        mode="sync",
        started_at=T0,
        latency_ms=5.0,
        input_tokens=1000,
        output_tokens=250,
        cached_input_tokens=0,
        cache_write_tokens=0,
        cost_usd=cost,
        reserved_usd=0.001,
        outcome="ok",
        http_status=200,
        error=None,
        attempt_id=f"a{i}",
    )


def _price(run_id: str = "r1") -> PriceRow:
    return PriceRow(
        run_id=run_id,
        provider="p-eu",
        model="m",
        region="eu",
        input_per_mtok=0.1,
        output_per_mtok=0.8,
        cached_input_per_mtok=0.05,
        context_window=32_000,
        max_output_tokens=4096,
        priced_at="2026-11-01",
    )


def _record(run_id: str = "r1", **changes: object) -> RunRecord:
    base = RunRecord(
        run_id=run_id,
        flow="nightly_batch",
        config_hash="h",
        corpus="c",
        schema_name="chunk_summary",
        budget_usd=1.0,
        started_at=T0,
        status="succeeded",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _healthy_run(store: Store, n: int = 4, run_id: str = "r1") -> None:
    store.write_run(_record(run_id))
    store.write_rows("prices", run_id, [_price(run_id)])
    for i in range(n):  # one part per chunk, as small batches leave them
        store.write_rows("chunks", run_id, [_chunk(i, run_id)])
        store.write_rows("results", run_id, [_result(i, run_id)])
        store.write_rows("ledger", run_id, [_ledger(i, run_id)])


# -- compaction -----------------------------------------------------------------------------


def test_compaction_merges_parts_and_readers_never_see_rows_missing_or_doubled(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "out")
    for r in range(6):
        for i in range(25):
            store.write_rows("ledger", f"r{r}", [_ledger(i, f"r{r}")])
    expected = 6 * 25
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(store.read("SELECT count(*) FROM ledger").rows[0][0])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        written = store.compact()
        written += store.compact()  # merged parts are not merged again
    finally:
        stop.set()
        thread.join()

    assert written == 6
    assert len(seen) > 3 and set(seen) == {expected}
    store.refresh_catalog()  # the catalog's glob views (other clients) agree
    assert store.query("SELECT count(*) FROM ledger").rows == [(expected,)]
    con = duckdb.connect(str(store.catalog_path), read_only=True)
    assert con.execute("SELECT count(*) FROM ledger").fetchone() == (expected,)
    con.close()
    # The replaced parts stay on disk (hidden) for readers in flight, then go.
    folder = store.root / "ledger" / "r0"
    assert len(list(folder.glob("part-*.parquet"))) == 26
    store.compact(grace_s=0)
    assert [p.name.endswith("-m.parquet") for p in folder.glob("part-*.parquet")] == [True]
    assert store.read("SELECT count(DISTINCT attempt_id) FROM ledger").rows == [(25,)]
    assert store.read("SELECT count(*) FROM ledger").rows == [(expected,)]


def test_a_crash_mid_merge_or_after_the_switch_loses_and_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "out")
    for i in range(5):
        store.write_rows("results", "r1", [_result(i)])
    folder = store.root / "results" / "r1"

    def dies(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process stops while writing the merged part

    monkeypatch.setattr(compaction.os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        store.compact("r1")
    monkeypatch.undo()
    assert len(list(folder.iterdir())) == 5  # no temp file left, the old parts untouched
    assert store.read("SELECT count(*), count(DISTINCT chunk_id) FROM results").rows == [(5, 5)]

    compaction.compact_folder(folder, SCHEMAS["results"])  # switch done, deletion not yet
    assert len(list(folder.glob("part-*.parquet"))) == 6  # 5 replaced + 1 merged, all on disk
    assert store.read("SELECT count(*), count(DISTINCT chunk_id) FROM results").rows == [(5, 5)]
    store.refresh_catalog()
    assert store.query("SELECT count(*) FROM results").rows == [(5,)]

    store.compact("r1", grace_s=0)  # a later compaction deletes the hidden leftovers
    assert len(list(folder.glob("part-*.parquet"))) == 1
    assert store.read("SELECT count(*) FROM results").rows == [(5,)]


def test_compaction_keeps_the_latest_run_record(tmp_path: Path) -> None:
    store = Store(tmp_path / "out")
    for n, status in enumerate(["running", "running", "succeeded"]):
        store.write_run(_record(status=status, updated_at=T0 + n, chunks=n))  # type: ignore[arg-type]
    store.compact("r1")
    latest = store.latest_run("r1")
    assert latest is not None and (latest.status, latest.chunks) == ("succeeded", 2)


# -- damaged parts --------------------------------------------------------------------------


def test_a_truncated_part_is_ignored_by_readers_and_reported_by_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(tmp_path / "out")
    _healthy_run(store)
    store.refresh_catalog()
    victim = sorted((store.root / "results" / "r1").glob("part-*.parquet"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a half-written file, as a bad copy leaves

    assert store.read("SELECT count(*) FROM results WHERE run_id = 'r1'").rows == [(3,)]
    assert not victim.exists()
    assert store.quarantined() == [Path("_quarantine/results/r1") / victim.name]

    code = main(["audit", "r1", "--root", str(store.root)])
    out = capsys.readouterr().out
    assert code == 1
    assert "BREACH  parts_whole" in out and victim.name in out
    assert "BREACH  one_result_per_chunk" in out  # the lost result shows as a missing row
    assert "verdict: FAIL" in out


# -- audit ----------------------------------------------------------------------------------


def test_audit_passes_a_healthy_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "out")
    _healthy_run(store)
    report = audit(store, "r1")
    assert report.ok, report.text()
    assert [c.name for c in report.checks] == [
        "parts_whole",
        "residency",
        "reused_in_region",
        "budget",
        "one_result_per_chunk",
        "ledger_unique",
        "cost_matches_prices",
        "worst_case",
        "batch",
    ]
    assert report.checks[-2].detail == "every attempt is booked at its reported usage"
    assert report.checks[-1].detail == "no attempt went through a provider batch job"


@pytest.mark.parametrize(
    ("breach", "check"),
    [
        ("us_attempt", "residency"),
        ("overspend", "budget"),
        ("double_result", "one_result_per_chunk"),
        ("double_attempt", "ledger_unique"),
        ("wrong_cost", "cost_matches_prices"),
        ("reused_from_us", "reused_in_region"),
    ],
)
def test_audit_names_each_kind_of_breach(tmp_path: Path, breach: str, check: str) -> None:
    store = Store(tmp_path / "out")
    _healthy_run(store)
    if breach == "us_attempt":
        store.write_rows(
            "ledger", "r1", [dataclasses.replace(_ledger(9, region="us"), chunk_id="c1")]
        )
    elif breach == "overspend":
        store.write_run(_record(budget_usd=0.0005))  # a later version of the record
    elif breach == "double_result":
        store.write_rows("results", "r1", [_result(2)])
    elif breach == "double_attempt":
        store.write_rows("ledger", "r1", [_ledger(3)])
    elif breach == "reused_from_us":  # an answer made in the US reused for an EU-only chunk
        store.write_rows("chunks", "r1", [_chunk(9)])
        reused = dataclasses.replace(_result(9), region="us", reused_from="r0", attempts=0)
        store.write_rows("results", "r1", [reused])
    else:
        wrong = dataclasses.replace(_ledger(7, cost=0.0004), chunk_id="c1")
        store.write_rows("ledger", "r1", [wrong])
    report = audit(store, "r1")
    failed = [c.name for c in report.checks if not c.ok]
    assert failed == [check], report.text()
    assert "verdict: FAIL" in report.text()


# -- migrations -----------------------------------------------------------------------------


def _old_root(root: Path) -> None:
    """A root as a docroute before run families wrote it: older columns, old catalog."""
    old_runs = SCHEMAS["runs"]
    for name in ("family_id", "schema_version", "prompt_version", "model_policy", "selection"):
        old_runs = old_runs.remove(old_runs.get_field_index(name))
    old_results = SCHEMAS["results"]
    for name in ("schema_version", "idem_key", "reused_from", "excluded"):
        old_results = old_results.remove(old_results.get_field_index(name))
    scratch = Store(root / "scratch")
    for run_id, parent in (("p1", None), ("c1", "p1"), ("c2", "c1")):
        scratch.write_run(_record(run_id, parent_run_id=parent, updated_at=T0))
        scratch.write_rows("results", run_id, [_result(0, run_id)])
    for table, schema in (("runs", old_runs), ("results", old_results)):
        for part in (scratch.root / table).glob("*/part-*.parquet"):
            dest = root / table / part.parent.name / part.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pq.read_table(part).select(schema.names), dest)
        (root / table / "_schema.parquet").parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), root / table / "_schema.parquet")
    con = duckdb.connect(str(root / "catalog.duckdb"))
    con.execute(f"CREATE VIEW runs AS SELECT * FROM read_parquet('{root}/runs/**/*.parquet')")
    con.close()


def test_an_old_root_opens_with_named_migrations(tmp_path: Path) -> None:
    root = tmp_path / "old"
    _old_root(root)
    store = Store(root)
    store.refresh_catalog()

    assert applied(store) == [name for name, _ in MIGRATIONS]
    families = store.query("SELECT run_id, family_id FROM runs ORDER BY run_id").rows
    assert families == [("c1", "p1"), ("c2", "p1"), ("p1", "p1")]
    rows = store.query("SELECT family_id, chunk_id, run_id FROM effective_results").rows
    assert len(rows) == 1 and rows[0][:2] == ("p1", "c0")
    assert store.query("SELECT idem_key FROM results").rows == [(None,)] * 3
    assert store.migrate() == []  # idempotent


def test_a_root_from_a_newer_docroute_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "out")
    _healthy_run(store)
    names = [*applied(store), "0099_from_the_future"]
    (store.root / STATE_FILE).write_text(json.dumps({"migrations": names}))
    with pytest.raises(NewerRootError, match="newer docroute"):
        Store(store.root).migrate()


# -- the run lock ---------------------------------------------------------------------------


def test_the_run_lock_refuses_a_second_holder_and_marks_dead_runs_interrupted(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "out")
    store.write_run(_record("alive", status="running"))
    store.write_run(_record("dead", status="running"))
    lock = RunLock.acquire(store.root, "alive")
    with pytest.raises(RunBusyError, match="still running"):
        RunLock.acquire(store.root, "alive")

    recover(store)
    statuses = dict(store.read("SELECT run_id, status FROM runs").rows)
    assert statuses == {"alive": "running", "dead": "interrupted"}
    lock.release()
    assert not RunLock.held(store.root, "alive")
    recover(store)
    assert store.latest_run("alive").status == "interrupted"  # type: ignore[union-attr]
