"""``Store``: the one object the pipeline and the ``docroute`` command use to keep data.

    store = Store(Path("out"))
    store.write_rows("results", run_id, results)        # one crash-safe Parquet part
    store.write_run(record)                             # one more run record
    store.refresh_catalog()                             # out/catalog.duckdb views
    store.read("SELECT * FROM results WHERE run_id = ? AND status <> 'succeeded'", [run_id])
    store.query("SELECT provider, sum(cost_usd) FROM ledger GROUP BY ALL")  # user SQL

Layout: ``<root>/<table>/<run_id>/part-<seq>-<uuid8>.parquet``, a zero-row
``<root>/<table>/_schema.parquet`` per table, ``<root>/catalog.duckdb``, the migrations
applied (``<root>/_catalog.json``), journals of runs in progress (``<root>/_journal/``)
and parts found damaged, moved aside (``<root>/_quarantine/``).

A part that is not a whole Parquet file (truncated by a failing disk or a half copy;
docroute's own writes are atomic) is moved to ``_quarantine/`` the first time the store
meets it, with a warning, so readers never fail on it; ``docroute audit`` reports it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from . import catalog, compaction, migrations, parts
from .catalog import QueryResult
from .runs import RunRecord, stamped
from .tables import SCHEMAS, TABLES, schema_for, to_arrow

log = logging.getLogger(__name__)

QUARANTINE_DIR = "_quarantine"


class Store:
    """Parquet parts and DuckDB views under one root folder (created lazily).

    ``lock_wait_s`` is how long catalog operations wait for another process's lock.
    """

    def __init__(self, root: Path | str, *, lock_wait_s: float = catalog.LOCK_WAIT_S) -> None:
        self.root: Path = Path(root).expanduser().resolve()
        self.lock_wait_s = lock_wait_s
        self._schema_files_ready = False
        self._migrated = False

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def catalog_path(self) -> Path:
        return self.root / catalog.CATALOG_FILE

    def write_rows(self, table: str, run_id: str, rows: Sequence[Any]) -> Path | None:
        """Append ``rows`` to ``table`` as one new part of run ``run_id``; ``None`` if empty.

        The part is wholly visible to readers or absent, even if the process dies mid-write.
        """
        schema_for(table)
        parts.check_run_id(run_id)
        if not rows:
            return None
        if not self._migrated:
            self.migrate()  # never add today's rows to a root still on an older layout
        arrow = to_arrow(table, run_id, rows)
        return parts.write_part(self.root / table / run_id, arrow)

    def write_run(self, record: RunRecord) -> None:
        """Append one version of ``record`` (``updated_at`` = now when it is 0)."""
        self.write_rows("runs", record.run_id, [stamped(record)])

    def latest_run(self, run_id: str) -> RunRecord | None:
        """The latest record of ``run_id``, or ``None`` if it was never written."""
        found = self.read("SELECT * FROM runs WHERE run_id = ?", [run_id]).to_dicts()
        return RunRecord.from_row(found[0]) if found else None

    def refresh_catalog(self) -> Path:
        """(Re)create the views in ``<root>/catalog.duckdb`` and return its path.

        Views glob the table folders, so they see parts written later; refresh after an
        upgrade that adds columns, or after moving the root folder.
        """
        self.migrate()
        self._ensure_schema_files(force=True)
        self.quarantine_damaged()
        return catalog.create_catalog(self.root, wait_s=self.lock_wait_s)

    def migrate(self) -> list[str]:
        """Apply the named migrations this root lacks (see ``migrations``)."""
        self._migrated = True  # first: a migration writes rows through this store
        return migrations.migrate(self)

    def compact(self, run_id: str | None = None, *, grace_s: float = compaction.GRACE_S) -> int:
        """Merge small parts of ``run_id`` (or of every run); returns the parts written.

        Readers never see a folder's rows missing or doubled while this runs.
        """
        written = 0
        for table in TABLES:
            folder = self.root / table
            if not folder.is_dir():
                continue
            runs = [run_id] if run_id else sorted(p.name for p in folder.iterdir() if p.is_dir())
            for run in runs:
                written += len(
                    compaction.compact_folder(folder / run, SCHEMAS[table], grace_s=grace_s)
                )
            for run_folder in folder.iterdir():  # leftovers of earlier compactions, any run
                if run_folder.is_dir():
                    compaction.collect_garbage(run_folder, grace_s=grace_s)
        return written

    def part_files(self) -> list[Path]:
        """Every part file under the table folders (whole or not)."""
        return sorted(
            p for table in TABLES for p in (self.root / table).glob("*/" + parts.PART_GLOB)
        )

    def quarantine_damaged(self) -> list[Path]:
        """Move parts that are not whole Parquet files to ``_quarantine/``; returns new paths."""
        moved = []
        for path in self.part_files():
            if parts.is_whole(path):
                continue
            target = self.root / QUARANTINE_DIR / path.relative_to(self.root)
            parts.ensure_dir(target.parent)
            os.replace(path, target)
            moved.append(target)
            log.warning(
                "moved a damaged part (not a whole Parquet file) out of the way: %s → %s; "
                "`docroute audit` lists it",
                path,
                target,
            )
        return moved

    def quarantined(self) -> list[Path]:
        """Parts moved aside as damaged, relative to the root."""
        folder = self.root / QUARANTINE_DIR
        return sorted(p.relative_to(self.root) for p in folder.rglob("*") if p.is_file())

    def query(self, sql: str, params: Sequence[Any] | None = None) -> QueryResult:
        """Run a user's SQL: one read-only statement, able to read files under root only.

        Raises ``ReadOnlyQueryError`` for anything that writes or reaches outside the
        root, ``QueryError`` for any other failure, ``CatalogLockedError`` if the catalog
        stays locked.
        """
        catalog.check_read_only(sql)
        if catalog.built_for(self.catalog_path, wait_s=self.lock_wait_s) != str(self.root):
            self.refresh_catalog()  # missing, or copied here from another root
        with catalog.connect(self.catalog_path, read_only=True, wait_s=self.lock_wait_s) as con:
            names = catalog.tables_named_in(sql)  # a consistent snapshot of the parts they read
            try:
                for statement in catalog.view_statements(
                    self.root, names, snapshot=True, temp=True
                ):
                    con.execute(statement)
                catalog.sandbox(con, self.root)
                return catalog.run(con, sql, params)
            except duckdb.Error as exc:
                raise catalog.user_error(exc, self.root) from exc

    def read(self, sql: str, params: Sequence[Any] | None = None) -> QueryResult:
        """Run trusted SQL of the pipeline over the same views, without the sandbox.

        Uses a private in-memory DuckDB holding the catalog's view definitions (for the
        tables ``sql`` names: binding a view reads every part's footer), so it works
        before the first refresh and never waits for the catalog file's lock.
        """
        self._ensure_schema_files()
        try:
            return self._read(sql, params)
        except duckdb.InvalidInputException:
            if not self.quarantine_damaged():  # a damaged part: move it aside, read again
                raise
            return self._read(sql, params)
        except duckdb.Error as exc:
            raise catalog.QueryError(f"store read failed: {exc}") from exc

    def _read(self, sql: str, params: Sequence[Any] | None) -> catalog.QueryResult:
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            names = catalog.tables_named_in(sql)
            for statement in catalog.view_statements(self.root, names, snapshot=True):
                con.execute(statement)
            return catalog.run(con, sql, params)
        finally:
            con.close()

    def _ensure_schema_files(self, *, force: bool = False) -> None:
        """Write each table's zero-row ``_schema.parquet`` (once per Store unless forced)."""
        if self._schema_files_ready and not force:
            return
        for table in TABLES:
            parts.write_schema_file(self.root / table, SCHEMAS[table])
        self._schema_files_ready = True
