"""pipeline.store against real pyarrow and real DuckDB, in a temp folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.models import Chunk, LedgerEntry, Result
from pipeline.store import (
    SCHEMAS,
    TABLES,
    CatalogLockedError,
    DocumentRow,
    PriceRow,
    QueryError,
    QueryResult,
    ReadOnlyQueryError,
    RunRecord,
    Store,
    render,
)
from pipeline.store.parts import write_atomic

T0 = 1_750_000_000.25  # 2025-06-15T15:06:40.25Z
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "out")


def chunk(i: int = 0) -> Chunk:
    return Chunk(
        chunk_id=f"c{i}",
        doc_id="d1",
        path="eu/a.txt",
        index=i,
        char_start=10 * i,
        char_end=10 * i + 10,
        token_estimate=3,
        text=f'text, "quoted"\nline {i}',
        regions=("eu-west", "eu-central"),
        residency_rule="eu",
    )


def result(i: int = 0, run_id: str = "r1", status: str = "succeeded") -> Result:
    return Result(
        run_id=run_id,
        chunk_id=f"c{i}",
        doc_id="d1",
        path="eu/a.txt",
        status=status,  # type: ignore[arg-type]
        reason=None if status == "succeeded" else "no_route",
        output='{"total": 1}' if status == "succeeded" else None,
        provider="openai",
        model="gpt-x",
        region="eu-west",
        attempts=2,
        cost_usd=0.0125,
        finished_at=T0 + i,
        schema_name="invoice",
        error=None if status == "succeeded" else "every allowed endpoint is down",
    )


def ledger(i: int = 0, run_id: str = "r1") -> LedgerEntry:
    return LedgerEntry(
        run_id=run_id,
        chunk_id=f"c{i}",
        attempt=1,
        provider="mistral",
        model="small",
        region="eu-west",
        mode="sync",
        started_at=T0,
        latency_ms=123.5,
        input_tokens=100,
        output_tokens=20,
        cached_input_tokens=0,
        cache_write_tokens=0,
        cost_usd=0.001,
        reserved_usd=0.002,
        outcome="rate_limited",
        http_status=429,
        error=None,
        request_id="req-1",
    )


def document(run_id: str = "r1") -> DocumentRow:
    return DocumentRow(
        run_id=run_id,
        doc_id="d2",
        path="us/b.bin",
        size_bytes=2048,
        status="error",
        reason="binary",
        message="looks binary",
        chunks=0,
    )


def price_row(run_id: str = "r1") -> PriceRow:
    return PriceRow(
        run_id=run_id,
        provider="openai-eu",
        model="gpt-4o-mini",
        region="eu",
        input_per_mtok=0.15,
        output_per_mtok=0.6,
        cached_input_per_mtok=0.075,
        context_window=128_000,
        max_output_tokens=16_384,
        priced_at="2026-11-01",
    )


def run_record(run_id: str = "r1", **changes: Any) -> RunRecord:
    base = RunRecord(
        run_id=run_id,
        flow="nightly",
        config_hash="abc",
        corpus="examples/corpus",
        schema_name="invoice",
        budget_usd=5.0,
        started_at=T0,
    )
    return dataclasses.replace(base, **changes)


def as_utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def stored_value(table: str, column: str, value: Any) -> Any:
    """What a dataclass field should read back as from DuckDB."""
    if pa.types.is_timestamp(SCHEMAS[table].field(column).type) and value is not None:
        return as_utc(value)
    return list(value) if isinstance(value, tuple) else value


# --- round trips ---------------------------------------------------------------------


ROWS: dict[str, Callable[[], list[Any]]] = {
    "chunks": lambda: [chunk(0), chunk(1)],
    "results": lambda: [result(0), result(1, status="failed")],
    "ledger": lambda: [ledger(0), ledger(1)],
    "documents": lambda: [document()],
    "runs": lambda: [run_record(updated_at=T0 + 5, finished_at=T0 + 4, message="done")],
    "prices": lambda: [price_row()],
    "answers": lambda: [
        {"idem_key": "k0", "finished_at": T0, "cost_usd": 0.5, "region": "eu"},
        {"idem_key": "k1", "finished_at": T0 + 1, "cost_usd": 0.25, "region": None},
    ],
}


ORDER_BY = {
    "chunks": "chunk_id",
    "results": "chunk_id",
    "ledger": "chunk_id",
    "answers": "idem_key",
}


@pytest.mark.parametrize("table", TABLES)
def test_round_trip_every_table(store: Store, table: str) -> None:
    rows = ROWS[table]()
    path = store.write_rows(table, "r1", rows)
    assert path is not None and path.parent == store.root / table / "r1"
    store.refresh_catalog()

    sql = f"SELECT * FROM {table} ORDER BY {ORDER_BY.get(table, 'run_id')}"
    got = store.query(sql)
    assert got == store.read(sql)
    assert got.columns == SCHEMAS[table].names
    for want, have in zip(rows, got.to_dicts(), strict=True):
        fields = want if isinstance(want, dict) else dataclasses.asdict(want)
        expected = {k: stored_value(table, k, v) for k, v in fields.items()}
        assert have == {**expected, "run_id": "r1"}


def test_timestamps_are_utc_microseconds(store: Store) -> None:
    store.write_rows("ledger", "r1", [ledger()])
    (row,) = store.read("SELECT started_at, typeof(started_at) AS t FROM ledger").rows
    assert row == (as_utc(T0), "TIMESTAMP WITH TIME ZONE")
    part = next((store.root / "ledger" / "r1").glob("part-*.parquet"))
    assert pq.read_schema(part).field("started_at").type == pa.timestamp("us", tz="UTC")


def test_mappings_are_rows_and_run_id_is_filled_in(store: Store) -> None:
    row = dataclasses.asdict(document())
    del row["run_id"], row["reason"]
    store.write_rows("documents", "r7", [row])
    got = store.read("SELECT run_id, reason, size_bytes FROM documents").rows
    assert got == [("r7", None, 2048)]


def test_write_rows_rejects_bad_input(store: Store) -> None:
    with pytest.raises(ValueError, match=r"unknown table 'result'.*runs, documents, chunks"):
        store.write_rows("result", "r1", [result()])
    with pytest.raises(ValueError, match=r"no column.*'colour'"):
        store.write_rows("documents", "r1", [{**dataclasses.asdict(document()), "colour": 1}])
    with pytest.raises(ValueError, match=r"documents\.path is required"):
        store.write_rows("documents", "r1", [{**dataclasses.asdict(document()), "path": None}])
    with pytest.raises(ValueError, match="must belong to run 'r2'"):
        store.write_rows("results", "r2", [result(run_id="r1")])
    with pytest.raises(ValueError, match=r"ledger\.attempt"):
        store.write_rows("ledger", "r1", [{**dataclasses.asdict(ledger()), "attempt": "one"}])
    for bad in ("../x", "a/b", "run=1", "_schema", ".hidden", ""):
        with pytest.raises(ValueError, match="not a valid folder name"):
            store.write_rows("results", bad, [result(run_id=bad)])
    assert not any(store.root.rglob("*.parquet"))


def test_empty_rows_write_nothing(store: Store) -> None:
    assert store.write_rows("results", "r1", []) is None
    assert not (store.root / "results").exists()


def test_schemas_match_the_dataclasses() -> None:
    pairs = {
        "chunks": Chunk,
        "results": Result,
        "ledger": LedgerEntry,
        "documents": DocumentRow,
        "runs": RunRecord,
        "prices": PriceRow,
    }
    for table, kind in pairs.items():
        fields = {f.name: f for f in dataclasses.fields(kind)}
        extra_run_id = {"run_id"} if table == "chunks" else set()
        assert set(SCHEMAS[table].names) == set(fields) | extra_run_id, table
        for name, f in fields.items():
            nullable = "None" in str(f.type)
            assert SCHEMAS[table].field(name).nullable == nullable, (table, name)


# --- views -------------------------------------------------------------------------------


def test_views_work_with_no_parts(store: Store) -> None:
    path = store.refresh_catalog()
    assert path == store.root / "catalog.duckdb"
    for table in TABLES:
        assert store.query(f"SELECT count(*) FROM {table}").rows == [(0,)]
        assert store.read(f"SELECT * FROM {table}").columns == SCHEMAS[table].names
    # Any DuckDB client sees the same views.
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM ledger").fetchall() == [(0,)]
    finally:
        con.close()


def test_views_see_parts_written_after_refresh(store: Store) -> None:
    store.write_rows("results", "r1", [result(0)])
    store.refresh_catalog()
    store.write_rows("results", "r1", [result(1)])
    store.write_rows("results", "r2", [result(2, run_id="r2")])
    got = store.query("SELECT run_id, chunk_id FROM results ORDER BY chunk_id").rows
    assert got == [("r1", "c0"), ("r1", "c1"), ("r2", "c2")]


def test_query_creates_a_missing_catalog(store: Store) -> None:
    store.write_rows("ledger", "r1", [ledger()])
    assert store.query("SELECT count(*) FROM ledger").rows == [(1,)]
    assert store.catalog_path.exists()


def test_catalog_follows_a_moved_root(tmp_path: Path) -> None:
    Store(tmp_path / "a").write_rows("ledger", "r1", [ledger()])
    Store(tmp_path / "a").refresh_catalog()
    (tmp_path / "a").rename(tmp_path / "b")
    moved = Store(tmp_path / "b")
    assert moved.query("SELECT count(*) FROM ledger").rows == [(1,)]
    assert moved.query("SHOW TABLES").rows == [(t,) for t in sorted([*TABLES, "effective_results"])]


def test_missing_table_folder_is_explained(store: Store) -> None:
    store.refresh_catalog()
    shutil.rmtree(store.root / "ledger")
    with pytest.raises(QueryError, match="point at files that are gone"):
        store.query("SELECT * FROM ledger")


def test_runs_view_shows_latest_record_per_run(store: Store) -> None:
    store.write_run(run_record("r1", updated_at=T0 + 30, status="succeeded", succeeded=3))
    store.write_run(run_record("r1", updated_at=T0 + 10))  # older, written later
    store.write_run(run_record("r2", updated_at=T0 + 1))
    store.write_run(run_record("r2", updated_at=T0 + 1, status="failed", message="boom"))
    store.refresh_catalog()
    got = store.query("SELECT run_id, status, succeeded, message FROM runs ORDER BY run_id")
    assert got.rows == [("r1", "succeeded", 3, None), ("r2", "failed", 0, "boom")]
    assert len(list((store.root / "runs" / "r1").glob("part-*.parquet"))) == 2


def test_write_run_stamps_updated_at_without_changing_the_record(store: Store) -> None:
    record = run_record("r1")
    store.write_run(record)
    assert record.updated_at == 0.0
    record.status, record.finished_at = "completed_with_failures", T0 + 60
    time.sleep(0.002)
    store.write_run(record)
    latest = store.latest_run("r1")
    assert latest is not None and latest.status == "completed_with_failures"
    assert latest.finished_at == T0 + 60 and latest.updated_at > T0
    assert store.latest_run("nope") is None


# --- atomic parts -------------------------------------------------------------------------


def test_writes_leave_only_parts(store: Store) -> None:
    for i in range(3):
        store.write_rows("ledger", "r1", [ledger(i)])
    names = sorted(p.name for p in (store.root / "ledger" / "r1").iterdir())
    assert [n[:14] for n in names] == ["part-00000001-", "part-00000002-", "part-00000003-"]
    assert all(n.endswith(".parquet") for n in names)
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]


def test_stray_temp_file_is_not_read(store: Store) -> None:
    store.write_rows("results", "r1", [result(0)])
    folder = store.root / "results" / "r1"
    stray = folder / ".part-00000002-deadbeef.parquet.0badf00d.tmp"
    pq.write_table(pa.Table.from_pylist([dataclasses.asdict(result(9))]), stray)
    (folder / ".part-00000003-cafebabe.parquet.12345678.tmp").write_bytes(b"PAR1 half")
    store.refresh_catalog()
    assert store.query("SELECT chunk_id FROM results").rows == [("c0",)]
    assert store.read("SELECT chunk_id FROM results").rows == [("c0",)]


def test_failed_write_removes_its_temp_file(tmp_path: Path) -> None:
    final = tmp_path / "part-00000001-abcdef12.parquet"
    final.mkdir()  # os.replace onto a folder fails after the temp file is written
    with pytest.raises(OSError):
        write_atomic(final, pa.table({"x": [1]}))
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


WRITER = """
import sys
from pathlib import Path
from pipeline.store import Store
from pipeline.models import LedgerEntry
store = Store(Path(sys.argv[1]))
rows = [LedgerEntry("r1", f"c{i}", 1, "p", "m", "eu", "sync", 0.0, 1.0, 1, 1, 0, 0, 0.0, 0.0,
                    "ok", 200, "x" * 200) for i in range(20_000)]
print("ready", flush=True)
while True:
    store.write_rows("ledger", "r1", rows)
"""


def test_reader_never_sees_a_partial_part_even_when_the_writer_is_killed(store: Store) -> None:
    store.refresh_catalog()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store.root)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            (count,) = store.read("SELECT count(*) FROM ledger").rows[0]
            assert count % 20_000 == 0
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    (count,) = store.query("SELECT count(*) FROM ledger").rows[0]
    assert count > 0 and count % 20_000 == 0


# --- read-only, sandboxed SQL ---------------------------------------------------------


@pytest.fixture
def filled(store: Store) -> Store:
    store.write_rows("results", "r1", [result(0), result(1, status="failed")])
    store.write_rows("ledger", "r1", [ledger(0)])
    store.refresh_catalog()
    return store


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("COPY results TO '/tmp/docroute-leak.csv'", "COPY statements are refused; use SELECT"),
        ("INSERT INTO results SELECT * FROM results", "INSERT statements are refused"),
        ("CREATE TABLE t AS SELECT 1", "CREATE statements are refused"),
        ("ATTACH '/tmp/other.duckdb' AS o", "ATTACH statements are refused"),
        ("INSTALL httpfs", "INSTALL statements are refused"),
        ("LOAD httpfs", "LOAD statements are refused"),
        ("SET enable_external_access = true", "SET statements are refused"),
        ("DROP VIEW results", "DROP statements are refused"),
        ("SELECT 1; SELECT 2", "one statement at a time; got 2"),
        ("SELECT 1; COPY results TO 'x.csv'", "one statement at a time; got 2"),
        ("EXPLAIN ANALYZE COPY results TO '/tmp/x.csv'", "EXPLAIN of COPY statements is refused"),
    ],
)
def test_query_refuses_writes(filled: Store, sql: str, message: str) -> None:
    with pytest.raises(ReadOnlyQueryError, match=message):
        filled.query(sql)


def test_query_refuses_copy_into_the_root(filled: Store) -> None:
    target = filled.root / "results" / "r1" / "part-99999999-00000000.parquet"
    with pytest.raises(ReadOnlyQueryError, match="COPY statements are refused"):
        filled.query(f"COPY (SELECT * FROM results) TO '{target}' (FORMAT parquet)")
    assert not target.exists()
    assert filled.query("SELECT count(*) FROM results").rows == [(2,)]


def test_query_cannot_read_outside_the_root(filled: Store, tmp_path: Path) -> None:
    outside = tmp_path / "secret.parquet"
    pq.write_table(pa.table({"secret": ["s3cr3t"]}), outside)
    for sql in (
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_parquet('{outside}')",
        f"SELECT * FROM read_parquet('{filled.root}/../secret.parquet')",
        "SELECT * FROM glob('/etc/*')",
    ):
        with pytest.raises(ReadOnlyQueryError, match=r"can only read .* files under .*refused"):
            filled.query(sql)
    with pytest.raises(ReadOnlyQueryError) as refused:
        filled.query("SELECT * FROM glob('/etc/*')")
    assert "(runs, documents, chunks, results, ledger, prices, answers, effective_results)" in (
        str(refused.value)
    ), "every table a user may read is named"
    # The sandbox belongs to that query only: trusted reads and refreshes still work.
    assert filled.read(f"SELECT * FROM read_parquet('{outside}')").rows == [("s3cr3t",)]
    filled.refresh_catalog()


def test_query_reads_files_under_the_root(filled: Store) -> None:
    sql = f"SELECT count(*) FROM read_parquet('{filled.root}/results/*/part-*.parquet')"
    assert filled.query(sql).rows == [(2,)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT status, count(*) AS n FROM results GROUP BY status ORDER BY status",
        "WITH s AS (SELECT status FROM results) SELECT status, count(*) FROM s GROUP BY 1 "
        "ORDER BY 1",
        "FROM results SELECT status, count(*) GROUP BY ALL ORDER BY ALL",
    ],
)
def test_query_runs_selects(filled: Store, sql: str) -> None:
    assert filled.query(sql).rows == [("failed", 1), ("succeeded", 1)]


def test_query_runs_describe_summarize_explain_and_params(filled: Store) -> None:
    described = filled.query("DESCRIBE ledger").to_dicts()
    assert [d["column_name"] for d in described] == SCHEMAS["ledger"].names
    assert filled.query("SUMMARIZE results").rows
    assert filled.query("EXPLAIN SELECT * FROM results").rows
    assert filled.query("EXPLAIN ANALYZE SELECT * FROM results").rows
    got = filled.query("SELECT chunk_id FROM results WHERE status = ?", ["failed"])
    assert got == QueryResult(columns=["chunk_id"], rows=[("c1",)])


def test_query_errors_are_clear(filled: Store) -> None:
    with pytest.raises(QueryError, match=r"the query failed: .*nope") as info:
        filled.query("SELECT * FROM nope")
    assert not isinstance(info.value, ReadOnlyQueryError)
    with pytest.raises(QueryError, match="could not parse"):
        filled.query("SELEC 1")
    with pytest.raises(QueryError, match="no SQL statement"):
        filled.query("  -- nothing\n")


HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(path), str(seconds)],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    return holder


def test_locked_catalog_is_retried_then_reported(tmp_path: Path) -> None:
    store = Store(tmp_path / "out", lock_wait_s=0.3)
    store.refresh_catalog()
    holder = hold_lock(store.catalog_path, 30)
    try:
        with pytest.raises(CatalogLockedError, match=r"catalog .* is locked by another process"):
            store.query("SELECT 1")
        with pytest.raises(CatalogLockedError, match=r"stayed locked for 0\.3s"):
            store.refresh_catalog()
        assert store.read("SELECT count(*) FROM runs").rows == [(0,)]  # reads don't wait
    finally:
        holder.kill()
        holder.wait()


def test_brief_lock_is_waited_out(tmp_path: Path) -> None:
    store = Store(tmp_path / "out", lock_wait_s=10)
    store.refresh_catalog()
    holder = hold_lock(store.catalog_path, 0.5)
    try:
        assert store.query("SELECT 42").rows == [(42,)]
    finally:
        holder.wait()


# --- render ------------------------------------------------------------------------------


def test_render_table_aligns_and_shortens() -> None:
    result = QueryResult(
        ["provider", "usd", "note"],
        [("openai", 1.5, None), ("mistral", 12.25, "line1\nline2 " + "x" * 60)],
    )
    assert render(result, "table").splitlines() == [
        "provider |   usd | note",
        "---------+-------+-----------------------------------------",
        "openai   |   1.5 | NULL",
        "mistral  | 12.25 | line1⏎line2 " + "x" * 27 + "…",
        "(2 rows; 1 value cut at 40 characters (…): --format csv or json shows them whole)",
    ]
    assert render(QueryResult(["a"], []), "table") == "a\n-\n(0 rows)"


def test_render_csv_quotes() -> None:
    result = QueryResult(["a", "b", "c"], [('x, "y"', None, "two\nlines"), ("plain", 3, True)])
    assert render(result, "csv") == 'a,b,c\n"x, ""y""",,"two\nlines"\nplain,3,true\n'


def test_render_json_types(store: Store) -> None:
    store.write_rows("ledger", "r1", [ledger()])
    from_duckdb = store.read(
        "SELECT started_at, DATE '2025-01-02' AS d, 1.50::DECIMAL(10, 2) AS dec, "
        "'\\x00\\xff'::BLOB AS b, 'NaN'::DOUBLE AS nan, ['eu'] AS regions, "
        "INTERVAL 90 SECOND AS took, http_status, error FROM ledger"
    )
    (obj,) = json.loads(render(from_duckdb, "json"))
    assert obj == {
        "started_at": "2025-06-15T15:06:40.250000+00:00",
        "d": "2025-01-02",
        "dec": 1.5,
        "b": "AP8=",
        "nan": None,
        "regions": ["eu"],
        "took": 90.0,
        "http_status": 429,
        "error": None,
    }
    assert render(QueryResult(["x"], []), "json") == "[]"
    decimal_only = QueryResult(["v"], [(Decimal("0.10"),)])
    assert json.loads(render(decimal_only, "json")) == [{"v": 0.1}]


def test_render_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'; use one of table, csv, json"):
        render(QueryResult([], []), "xml")  # type: ignore[arg-type]
