"""DuckDB views over the parts, and SQL that can only read.

``<root>/catalog.duckdb`` holds one view per table. Each view globs its table's folder
(``<root>/<table>/**/*.parquet``), so parts written after a refresh are seen, and the
zero-row ``_schema.parquet`` the glob also matches keeps a view valid before any part
exists. ``runs`` keeps only the latest record of each run (runs are append-only). Parts
that a merged part replaces (see ``compaction``) are left out by every view.

docroute's own readers (``Store.read``, and ``docroute sql`` through temporary views)
read a *snapshot* instead: the part files listed once when the query starts
(``snapshot=True``), so a compaction finishing mid-query can never make rows vanish or
appear twice. The catalog file's glob views are for other DuckDB clients: they see new
parts without a refresh, and a compaction's switch can race their query's start by a
few microseconds.

Derived views: ``effective_results`` holds, per chunk of each run family, the latest
succeeded answer (or, for a chunk that never succeeded, its latest result).

Users' SQL goes through :func:`check_read_only`, then runs on a read-only connection
that :func:`sandbox` confines to the root folder::

    check_read_only("SELECT provider, sum(cost_usd) FROM ledger GROUP BY ALL")  # passes
    check_read_only("COPY ledger TO 'x.csv'")
    # ReadOnlyQueryError: docroute sql is read-only: COPY statements are refused; use SELECT
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from .compaction import REPLACES_KEY, visible_parts
from .parts import SCHEMA_FILE
from .tables import TABLES

#: Views computed from the tables, with the tables they read.
DERIVED: dict[str, tuple[str, ...]] = {"effective_results": ("results", "runs")}

CATALOG_FILE = "catalog.duckdb"
#: A one-row table in the catalog naming the root its views were built for.
_ROOT_TABLE = "docroute_meta.build"  # its own schema: SHOW TABLES lists only the views
#: Statement types that only read. DESCRIBE, SHOW, SUMMARIZE, FROM and WITH … SELECT
#: parse as SELECT; EXPLAIN is allowed when what it explains is a SELECT.
_READ_TYPES = {duckdb.StatementType.SELECT}
_EXPLAIN_PREFIX = re.compile(
    r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+|\((?!\s*(?:SELECT|WITH|FROM|VALUES)\b)[^)]*\)\s*)?",
    re.IGNORECASE,
)
LOCK_WAIT_S = 5.0
# One DuckDB instance is shared by every connection of a process to the same file, and
# its settings are global to it: serialise our connections so a sandboxed query's locked
# configuration never meets another connection of ours.
_PROCESS_LOCK = threading.RLock()


class StoreError(Exception):
    """Base of the store's errors."""


class CatalogLockedError(StoreError):
    """The catalog file stayed locked by another process for too long."""


class QueryError(StoreError):
    """The SQL could not run; the message says why in DuckDB's words."""


class ReadOnlyQueryError(QueryError):
    """The SQL tried to write, or to read outside the store's root."""


@dataclass(slots=True)
class QueryResult:
    """Column names and row tuples of one query.

    >>> QueryResult(["a", "b"], [(1, "x")]).to_dicts()
    [{'a': 1, 'b': 'x'}]
    """

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def view_statements(
    root: Path,
    tables: Sequence[str] = (*TABLES, *DERIVED),
    *,
    snapshot: bool = False,
    temp: bool = False,
) -> list[str]:
    """``CREATE OR REPLACE VIEW`` for ``tables`` (and derived views) under ``root``.

    A derived view's tables come first, whether named or not. ``snapshot`` reads the
    part files visible now (one listing) instead of globbing at query time; ``temp``
    makes the views temporary (they then shadow a catalog's views of the same name).
    """
    if any(ch in str(root) for ch in "*?[]{}"):
        raise ValueError(f"the store root {root} must not contain glob characters (*?[]{{}})")
    kind = "TEMP VIEW" if temp else "VIEW"
    out = [
        f"CREATE OR REPLACE {kind} {table} AS {_view_body(root, table, snapshot)}"
        for table in stored_tables_for(tables)
    ]
    return out + derived_statements(tables, kind)


def stored_tables_for(names: Sequence[str]) -> list[str]:
    """The stored tables that ``names`` (tables and derived views) read, in table order."""
    return [t for t in TABLES if t in names or any(t in DERIVED[d] for d in names if d in DERIVED)]


def derived_statements(names: Sequence[str], kind: str = "TEMP VIEW") -> list[str]:
    """``CREATE OR REPLACE`` of the derived views among ``names`` (their tables come first)."""
    return [
        f"CREATE OR REPLACE {kind} {name} AS {_DERIVED_SQL[name]}"
        for name in DERIVED
        if name in names
    ]


def tables_named_in(sql: str) -> list[str]:
    """The tables and views whose names occur as words in ``sql`` (a superset of those read).

    >>> tables_named_in("SELECT * FROM results r JOIN ledger USING (chunk_id)")
    ['results', 'ledger']
    """
    words = {w.lower() for w in re.findall(r"[A-Za-z_]+", sql)}
    return [name for name in (*TABLES, *DERIVED) if name in words]


def snapshot_files(root: Path, table: str) -> list[Path]:
    """The table's schema file and every visible part, from one listing per run folder."""
    folder = root / table
    files = [folder / SCHEMA_FILE]
    if folder.is_dir():
        with os.scandir(folder) as entries:
            runs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        for run in runs:
            files += visible_parts(folder / run)
    return files


def _view_body(root: Path, table: str, snapshot: bool = False) -> str:
    if snapshot:
        listed = ", ".join(sql_string(str(p)) for p in snapshot_files(root, table))
        source = f"read_parquet([{listed}], union_by_name=true, hive_partitioning=false"
        if table != "runs":
            return f"SELECT * FROM {source})"
        return f"SELECT * EXCLUDE (filename) FROM {source}, filename=true) {LATEST_RUN}"
    glob = sql_string(f"{root}/{table}/**/*.parquet")
    source = f"read_parquet({glob}, union_by_name=true, hive_partitioning=false, filename=true)"
    # Parts a merged part replaces: hidden from the instant the merged part is renamed in.
    replaced = (
        "SELECT parse_dirpath(file_name) || '/' || unnest(from_json(decode(value), "
        f"'[\"VARCHAR\"]')) FROM parquet_kv_metadata({glob}) "
        f"WHERE decode(key) = {sql_string(REPLACES_KEY.decode())}"
    )
    visible = f"FROM {source} WHERE filename NOT IN ({replaced})"
    if table != "runs":
        return f"SELECT * EXCLUDE (filename) {visible}"
    # Latest record per run; the part name (zero-padded sequence) breaks updated_at ties.
    return f"SELECT * EXCLUDE (filename) {visible} {LATEST_RUN}"


#: The latest record per run; the part name (zero-padded sequence) breaks ties.
LATEST_RUN = (
    "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY updated_at DESC, filename DESC) = 1"
)


_DERIVED_SQL = {
    # Per (family, chunk): the latest succeeded result, else the latest result at all.
    "effective_results": (
        "SELECT * EXCLUDE (rank_in_family) FROM ("
        "SELECT coalesce(u.family_id, r.run_id) AS family_id, r.*, row_number() OVER ("
        "PARTITION BY coalesce(u.family_id, r.run_id), r.chunk_id "
        "ORDER BY (r.status = 'succeeded') DESC, r.finished_at DESC, r.run_id DESC"
        ") AS rank_in_family FROM results r LEFT JOIN runs u USING (run_id)"
        ") WHERE rank_in_family = 1"
    )
}


def create_catalog(root: Path, *, wait_s: float = LOCK_WAIT_S) -> Path:
    """(Re)create the views in ``<root>/catalog.duckdb``; waits up to ``wait_s`` for a lock."""
    path = root / CATALOG_FILE
    with connect(path, read_only=False, wait_s=wait_s) as con:
        con.execute("BEGIN TRANSACTION")
        con.execute("CREATE SCHEMA IF NOT EXISTS docroute_meta")
        for statement in view_statements(root):
            con.execute(statement)
        con.execute(
            f"CREATE OR REPLACE TABLE {_ROOT_TABLE} AS SELECT {sql_string(str(root))} AS root"
        )
        con.execute("COMMIT")
    return path


def built_for(path: Path, *, wait_s: float = LOCK_WAIT_S) -> str | None:
    """The root the catalog at ``path`` was built for; ``None`` if missing or pre-dating that.

    A copied or moved output folder keeps views over the old root until refreshed.
    """
    if not path.exists():
        return None
    with connect(path, read_only=True, wait_s=wait_s) as con:
        try:
            row = con.execute(f"SELECT root FROM {_ROOT_TABLE}").fetchone()
        except duckdb.CatalogException:
            return None
    return str(row[0]) if row else None


@contextmanager
def connect(
    path: Path, *, read_only: bool, wait_s: float = LOCK_WAIT_S
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the catalog at ``path``, retrying while another process holds it."""
    with _PROCESS_LOCK:
        con = _connect_with_retry(path, read_only, wait_s)
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield con
        finally:
            con.close()


def _connect_with_retry(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc):
                raise
            if time.monotonic() >= deadline:
                raise CatalogLockedError(
                    f"the catalog {path} is locked by another process (a DuckDB client or "
                    f"a catalog refresh) and stayed locked for {wait_s:g}s; close "
                    f"other connections to it and retry. DuckDB said: {exc}"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text or "different configuration" in text


def check_read_only(sql: str) -> None:
    """Raise unless ``sql`` is exactly one statement that only reads."""
    statements = _parse(sql)
    if not statements:
        raise QueryError("no SQL statement given")
    if len(statements) > 1:
        raise ReadOnlyQueryError(
            f"docroute sql runs one statement at a time; got {len(statements)}"
        )
    statement = statements[0]
    if statement.type == duckdb.StatementType.EXPLAIN:
        _check_explained(statement.query)
    elif statement.type not in _READ_TYPES:
        raise ReadOnlyQueryError(
            f"docroute sql is read-only: {_label(statement)} statements are refused; use SELECT"
        )


def _parse(sql: str) -> list[duckdb.Statement]:
    con = duckdb.connect()
    try:
        return list(con.extract_statements(sql))
    except duckdb.Error as exc:
        raise QueryError(f"could not parse the SQL: {exc}") from exc
    finally:
        con.close()


def _check_explained(query: str) -> None:
    """EXPLAIN ANALYZE runs what it explains, so that must be a SELECT too."""
    prefix = _EXPLAIN_PREFIX.match(query)
    inner = _parse(query[prefix.end() :]) if prefix else []
    if len(inner) != 1 or inner[0].type not in _READ_TYPES:
        what = _label(inner[0]) if len(inner) == 1 else "non-SELECT"
        raise ReadOnlyQueryError(
            f"docroute sql is read-only: EXPLAIN of {what} statements is refused; EXPLAIN a SELECT"
        )


def _label(statement: duckdb.Statement) -> str:
    """What the user typed (INSTALL, USE, CHECKPOINT) rather than DuckDB's class (LOAD…)."""
    word = re.match(r"\s*([A-Za-z]+)", statement.query)
    if word and word.group(1).upper() not in {"WITH", "FROM"}:
        return word.group(1).upper()
    return statement.type.name


def sandbox(con: duckdb.DuckDBPyConnection, root: Path | None) -> None:
    """Let ``con`` read files under ``root`` only (none for ``None``), and lock its settings.

    Order matters: allowed_directories can't change once external access is off, and
    nothing can change once the configuration is locked.
    """
    if root is not None:
        con.execute(f"SET allowed_directories = [{sql_string(f'{root}/')}]")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def run(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None) -> QueryResult:
    """Execute one statement and fetch everything it returns."""
    cursor = con.execute(sql, list(params) if params is not None else None)
    rows = cursor.fetchall()
    columns = [d[0] for d in cursor.description or []]
    return QueryResult(columns=columns, rows=[tuple(row) for row in rows])


def run_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None) -> pa.Table:
    """Execute one query and fetch what it returns as Arrow (no Python object per value)."""
    return con.sql(sql, params=list(params) if params is not None else None).to_arrow_table()


def user_error(exc: duckdb.Error, root: Path | str) -> QueryError:
    """A DuckDB error as the store's error, worded for someone typing ``docroute sql``."""
    text = str(exc)
    if isinstance(exc, duckdb.PermissionException):
        return ReadOnlyQueryError(
            f"docroute sql can only read the tables ({', '.join((*TABLES, *DERIVED))}) and "
            "files under "
            f"{root}/; refused: {text}"
        )
    if "read-only mode" in text or "configuration has been locked" in text:
        return ReadOnlyQueryError(f"docroute sql is read-only; refused: {text}")
    if "No files found" in text:
        return QueryError(
            f"the catalog's views point at files that are gone (was {root} moved?); "
            f"refresh the catalog and retry. DuckDB said: {text}"
        )
    return QueryError(f"the query failed: {text}")
