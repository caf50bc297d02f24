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

The root may also be an object-store URI (``s3://bucket/prefix``, ``gs://…``,
``file:///abs``; see ``fs`` and ``remote``): the same layout, without ``catalog.duckdb``
(readers build their views in memory), with journals and locks in a local state folder
(``Store.state_dir``)::

    store = Store("s3://bucket/docroute?region=eu-central-1")
    print(store.root)   # the URI, without secret-looking query parameters
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import duckdb
import pyarrow as pa

from . import catalog, compaction, migrations, parts, remote
from .catalog import QueryResult
from .fs import RemoteRoot, RootURI, is_uri
from .runs import RunRecord, stamped
from .tables import SCHEMAS, TABLES, schema_for, to_arrow

log = logging.getLogger(__name__)

QUARANTINE_DIR = "_quarantine"


class Store:
    """Parquet parts and DuckDB views under one root folder or URI (created lazily).

    ``lock_wait_s`` is how long catalog operations wait for another process's lock. A URI
    root is checked when the store is made (bucket, credentials): ``StoreError`` if unusable.
    """

    def __init__(self, root: Path | str, *, lock_wait_s: float = catalog.LOCK_WAIT_S) -> None:
        self.remote: RemoteRoot | None = None
        self.root: Path | RootURI
        if is_uri(root):
            self.remote = RemoteRoot.open(str(root))
            self.remote.check()
            self.root = self.remote.uri
        else:
            self.root = Path(root).expanduser().resolve()
        self.lock_wait_s = lock_wait_s
        self._schema_files_ready = False
        self._migrated = False

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def _path(self) -> Path:
        """The root folder (local roots only)."""
        assert isinstance(self.root, Path), "a remote root has no local folder"
        return self.root

    @property
    def catalog_path(self) -> Path:
        return self._path / catalog.CATALOG_FILE

    @property
    def state_dir(self) -> Path:
        """Where journals and run locks live: the root itself, or a local state folder."""
        return self.remote.state_dir if self.remote else self._path

    def has_data(self) -> bool:
        """Whether docroute has written here (a local root's catalog, a remote root's state).

        A first run killed before it refreshed the catalog has left its parts and journal
        but no ``catalog.duckdb``: that is data too (reading it recovers the run).
        """
        if self.remote:
            return self.remote.exists(migrations.STATE_FILE)
        if self.catalog_path.exists():
            return True
        return any((self._path / name).is_dir() for name in (*TABLES, "_journal"))

    def has_tables(self, tables: Sequence[str]) -> bool:
        """Whether each of ``tables`` has a folder (reading before any write creates nothing)."""
        if self.remote:
            return set(tables) <= set(self.remote.list_dirs(""))
        return all((self._path / t).is_dir() for t in tables)

    def write_rows(self, table: str, run_id: str, rows: Sequence[Any]) -> Path | str | None:
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
        if self.remote:
            return remote.write_part(self.remote, f"{table}/{run_id}", arrow)
        return parts.write_part(self._path / table / run_id, arrow)

    def write_run(self, record: RunRecord) -> None:
        """Append one version of ``record`` (``updated_at`` = now when it is 0)."""
        self.write_rows("runs", record.run_id, [stamped(record)])

    def latest_run(self, run_id: str) -> RunRecord | None:
        """The latest record of ``run_id``, or ``None`` if it was never written."""
        found = self.read("SELECT * FROM runs WHERE run_id = ?", [run_id]).to_dicts()
        return RunRecord.from_row(found[0]) if found else None

    def refresh_catalog(self) -> Path | None:
        """(Re)create the views in ``<root>/catalog.duckdb`` and return its path.

        Views glob the table folders, so they see parts written later; refresh after an
        upgrade that adds columns, or after moving the root folder. A remote root gets no
        catalog file (``None``): migrations run and damaged parts are moved aside, and
        docroute's readers build their views in memory.
        """
        self.migrate()
        self._ensure_schema_files(force=True)
        self.quarantine_damaged()
        if self.remote:
            return None
        return catalog.create_catalog(self._path, wait_s=self.lock_wait_s)

    def migrate(self) -> list[str]:
        """Apply the named migrations this root lacks (see ``migrations``)."""
        self._migrated = True  # first: a migration writes rows through this store
        return migrations.migrate(self)

    def compact(self, run_id: str | None = None, *, grace_s: float = compaction.GRACE_S) -> int:
        """Merge small parts of ``run_id`` (or of every run); returns the parts written.

        Readers never see a folder's rows missing or doubled while this runs.
        """
        if self.remote:
            return remote.compact(self.remote, run_id, grace_s=grace_s)
        written = 0
        for table in TABLES:
            folder = self._path / table
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

    def part_files(self) -> list[PurePath]:
        """Every part file under the table folders (whole or not).

        Local paths, or for a remote root the objects' paths relative to it.
        """
        if self.remote:
            return [
                PurePosixPath(self.remote.rel(info.path))
                for table in TABLES
                for infos in remote.part_infos(self.remote, table).values()
                for info in infos
            ]
        return sorted(
            p for table in TABLES for p in (self._path / table).glob("*/" + parts.PART_GLOB)
        )

    def damaged_parts(self) -> list[PurePath]:
        """Parts, relative to the root, that are not whole Parquet files (not yet moved)."""
        if self.remote:
            return [PurePosixPath(rel) for rel in remote.damaged(self.remote)]
        root = self._path
        return [p.relative_to(root) for p in map(Path, self.part_files()) if not parts.is_whole(p)]

    def quarantine_damaged(self) -> list[PurePath]:
        """Move parts that are not whole Parquet files to ``_quarantine/``; returns new paths."""
        if self.remote:
            return self._quarantine_remote(self.remote)
        moved: list[PurePath] = []
        for path in self.part_files():
            if parts.is_whole(Path(path)):
                continue
            target = self._path / QUARANTINE_DIR / path.relative_to(self._path)
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

    def _quarantine_remote(self, root: RemoteRoot) -> list[PurePath]:
        moved: list[PurePath] = []
        for rel in remote.damaged(root):
            target = f"{QUARANTINE_DIR}/{rel}"
            root.move(rel, target)
            moved.append(PurePosixPath(target))
            log.warning(
                "moved a damaged part (not a whole Parquet file) out of the way: %s → %s; "
                "`docroute audit` lists it",
                self.root / rel,
                self.root / target,
            )
        return moved

    def quarantined(self) -> list[PurePath]:
        """Parts moved aside as damaged, relative to the root."""
        if self.remote:
            return sorted(
                PurePosixPath(self.remote.rel(i.path))
                for i in self.remote.list_files(QUARANTINE_DIR)
            )
        folder = self._path / QUARANTINE_DIR
        return sorted(p.relative_to(self._path) for p in folder.rglob("*") if p.is_file())

    def query(self, sql: str, params: Sequence[Any] | None = None) -> QueryResult:
        """Run a user's SQL: one read-only statement, able to read files under root only.

        Raises ``ReadOnlyQueryError`` for anything that writes or reaches outside the
        root, ``QueryError`` for any other failure, ``CatalogLockedError`` if the catalog
        stays locked.
        """
        catalog.check_read_only(sql)
        if self.remote:
            return self._query_remote(self.remote, sql, params)
        if catalog.built_for(self.catalog_path, wait_s=self.lock_wait_s) != str(self.root):
            self.refresh_catalog()  # missing, or copied here from another root
        with catalog.connect(self.catalog_path, read_only=True, wait_s=self.lock_wait_s) as con:
            names = catalog.tables_named_in(sql)  # a consistent snapshot of the parts they read
            try:
                for statement in catalog.view_statements(
                    self._path, names, snapshot=True, temp=True
                ):
                    con.execute(statement)
                catalog.sandbox(con, self._path)
                return catalog.run(con, sql, params)
            except duckdb.Error as exc:
                raise catalog.user_error(exc, self.root) from exc

    def _query_remote(
        self, root: RemoteRoot, sql: str, params: Sequence[Any] | None
    ) -> QueryResult:
        """User SQL on a remote root: views over in-memory datasets, then no file access."""
        con = self._remote_reader(root, catalog.tables_named_in(sql))
        try:
            catalog.sandbox(con, None)  # registered datasets only; no file, no extension
            return catalog.run(con, sql, params)
        except duckdb.Error as exc:
            raise catalog.user_error(exc, self.root) from exc
        finally:
            con.close()

    def _remote_reader(self, root: RemoteRoot, names: list[str]) -> duckdb.DuckDBPyConnection:
        try:
            return remote.reader(root, names)
        except (pa.ArrowException, OSError) as exc:
            if not self.quarantine_damaged():  # a damaged part: move it aside, try again
                raise catalog.QueryError(f"reading {self.root} failed: {exc}") from exc
            return remote.reader(root, names)

    def read(self, sql: str, params: Sequence[Any] | None = None) -> QueryResult:
        """Run trusted SQL of the pipeline over the same views, without the sandbox.

        Uses a private in-memory DuckDB holding the catalog's view definitions (for the
        tables ``sql`` names: binding a view reads every part's footer), so it works
        before the first refresh and never waits for the catalog file's lock.
        """
        if self.remote:
            return self._read_remote(self.remote, sql, params)
        self._ensure_schema_files()
        try:
            return self._read(sql, params)
        except duckdb.InvalidInputException:
            if not self.quarantine_damaged():  # a damaged part: move it aside, read again
                raise
            return self._read(sql, params)
        except duckdb.Error as exc:
            raise catalog.QueryError(f"store read failed: {exc}") from exc

    def _read_remote(self, root: RemoteRoot, sql: str, params: Sequence[Any] | None) -> QueryResult:
        for attempt in (1, 2):
            con = self._remote_reader(root, catalog.tables_named_in(sql))
            try:
                return catalog.run(con, sql, params)
            except duckdb.Error as exc:  # a part damaged after the listing: move it, again
                if attempt == 2 or not self.quarantine_damaged():
                    raise catalog.QueryError(f"store read failed: {exc}") from exc
            finally:
                con.close()
        raise AssertionError("unreachable")

    def _read(self, sql: str, params: Sequence[Any] | None) -> catalog.QueryResult:
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            names = catalog.tables_named_in(sql)
            for statement in catalog.view_statements(self._path, names, snapshot=True):
                con.execute(statement)
            return catalog.run(con, sql, params)
        finally:
            con.close()

    def _ensure_schema_files(self, *, force: bool = False) -> None:
        """Write each table's zero-row ``_schema.parquet`` (once per Store unless forced)."""
        if self._schema_files_ready and not force:
            return
        self.write_schema_files()

    def write_schema_files(self) -> None:
        """Write each table's zero-row ``_schema.parquet`` where it is missing or outdated."""
        for table in TABLES:
            if self.remote:
                remote.write_schema_file(self.remote, table)
            else:
                parts.write_schema_file(self._path / table, SCHEMAS[table])
        self._schema_files_ready = True
