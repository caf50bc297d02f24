"""``Store``: the one object the pipeline and the ``docroute`` command use to keep data.

    store = Store(Path("out"))
    store.write_rows("results", run_id, results)        # one crash-safe Parquet part
    store.write_run(record)                             # one more run record
    store.refresh_catalog()                             # out/catalog.duckdb views
    store.read("SELECT * FROM results WHERE run_id = ? AND status <> 'succeeded'", [run_id])
    store.query("SELECT provider, sum(cost_usd) FROM ledger GROUP BY ALL")  # user SQL

Layout: ``<root>/<table>/<run_id>/part-<seq>-<uuid8>.parquet``, a zero-row
``<root>/<table>/_schema.parquet`` per table, and ``<root>/catalog.duckdb``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from . import catalog, parts
from .catalog import QueryResult
from .runs import RunRecord, stamped
from .tables import SCHEMAS, TABLES, schema_for, to_arrow


class Store:
    """Parquet parts and DuckDB views under one root folder (created lazily).

    ``lock_wait_s`` is how long catalog operations wait for another process's lock.
    """

    def __init__(self, root: Path | str, *, lock_wait_s: float = catalog.LOCK_WAIT_S) -> None:
        self.root: Path = Path(root).expanduser().resolve()
        self.lock_wait_s = lock_wait_s
        self._schema_files_ready = False

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
        self._ensure_schema_files(force=True)
        return catalog.create_catalog(self.root, wait_s=self.lock_wait_s)

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
            catalog.sandbox(con, self.root)
            try:
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
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            for statement in catalog.view_statements(self.root, catalog.tables_named_in(sql)):
                con.execute(statement)
            return catalog.run(con, sql, params)
        except duckdb.Error as exc:
            raise catalog.QueryError(f"store read failed: {exc}") from exc
        finally:
            con.close()

    def _ensure_schema_files(self, *, force: bool = False) -> None:
        """Write each table's zero-row ``_schema.parquet`` (once per Store unless forced)."""
        if self._schema_files_ready and not force:
            return
        for table in TABLES:
            parts.write_schema_file(self.root / table, SCHEMAS[table])
        self._schema_files_ready = True
