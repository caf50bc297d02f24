"""``Store``: the one object the pipeline and the ``docroute`` command use to keep data.

    store = Store(Path("out"))
    store.write_rows("ledger", run_id, entries)         # one crash-safe Parquet part
    store.write_results(run_id, results)                # results, and their reuse index
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
``file:///abs``): the same layout, without ``catalog.duckdb`` (readers build their views
in memory), with journals and locks in a local state folder (``Store.state_dir``)::

    store = Store("s3://bucket/docroute?region=eu-central-1")
    print(store.root)   # the URI, without secret-looking query parameters

Layers, each using only those below it:

- ``Store`` (here): the tables' rules, the same for every root: schemas and run ids
  checked, migrations applied before the first write, run records, trusted reads retried
  once a damaged part is moved aside, users' SQL checked read-only and its errors worded.
- ``root.Root``: where the parts are, behind one protocol: ``local.LocalRoot`` (a folder,
  through ``parts``, ``compaction`` and ``catalog``'s file) or ``remote.RemoteRoot``
  (objects, through ``fs.ObjectStore``).
- ``parts``, ``compaction``, ``catalog``, ``fs``, ``tables``: files, merges, views and SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from . import catalog, compaction, migrations, parts
from .catalog import QueryResult
from .fs import RootURI, is_uri
from .local import LocalRoot
from .remote import RemoteRoot
from .root import QUARANTINE_DIR, Root, quarantine_damaged
from .runs import RunRecord, stamped
from .tables import answer_rows, schema_for, to_arrow

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["QUARANTINE_DIR", "Store", "open_root"]


def open_root(root: Path | str) -> Root:
    """The ``Root`` that ``root`` names: a URI's (checked: bucket, credentials), or a folder's."""
    if is_uri(root):
        remote = RemoteRoot.open(str(root))
        remote.check()
        return remote
    return LocalRoot(Path(root).expanduser().resolve())


class Store:
    """Parquet parts and DuckDB views under one root folder or URI (created lazily).

    ``lock_wait_s`` is how long catalog operations wait for another process's lock. A URI
    root is checked when the store is made (bucket, credentials): ``StoreError`` if unusable.
    """

    def __init__(self, root: Path | str, *, lock_wait_s: float = catalog.LOCK_WAIT_S) -> None:
        self._root = open_root(root)
        self.root: Path | RootURI = self._root.location
        self.lock_wait_s = lock_wait_s
        self._migrated = False

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def remote(self) -> RemoteRoot | None:
        """The object-store root, for what lives only there (leases, the migrations file);
        ``None`` for a folder."""
        return self._root if isinstance(self._root, RemoteRoot) else None

    @property
    def catalog_path(self) -> Path | None:
        """``<root>/catalog.duckdb``; ``None`` for an object-store root (no catalog file)."""
        return self._root.catalog_path

    @property
    def state_dir(self) -> Path:
        """Where journals and run locks live: the root itself, or a local state folder."""
        return self._root.state_dir

    def has_data(self) -> bool:
        """Whether docroute has written here (a local root's catalog, a remote root's state).

        A first run killed before it refreshed the catalog has left its parts and journal
        but no ``catalog.duckdb``: that is data too (``docroute recover`` recovers the run).
        """
        return self._root.has_data()

    def has_tables(self, tables: Sequence[str]) -> bool:
        """Whether each of ``tables`` has a folder (reading before any write creates nothing)."""
        return set(tables) <= set(self._root.list_dirs(""))

    def run_folders(self, table: str) -> list[str]:
        """The run ids that have a folder under ``table``, sorted."""
        schema_for(table)
        return [name for name in self._root.list_dirs(table) if not name.startswith(".")]

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
        return self._root.write_part(table, run_id, to_arrow(table, run_id, rows))

    def write_results(self, run_id: str, results: Sequence[Any]) -> None:
        """Append ``results`` to ``results`` and their paid-for answers to ``answers``.

        The index part is written first: a crash between the two leaves an index row
        whose result the run's journal still holds (recovery writes it), never a result
        the index misses.
        """
        self.write_rows("answers", run_id, answer_rows(results))
        self.write_rows("results", run_id, results)

    def read_run(self, table: str, run_id: str, where: pc.Expression | None = None) -> pa.Table:
        """The rows of one run's folder of ``table`` as Arrow (``where``: a filter),
        without a view over the whole table: what the per-batch reuse lookup reads."""
        schema_for(table)
        parts.check_run_id(run_id)
        return self._root.read_run(table, run_id, where)

    def write_run(self, record: RunRecord) -> None:
        """Append one version of ``record`` (``updated_at`` = now when it is 0)."""
        self.write_rows("runs", record.run_id, [stamped(record)])

    def latest_run(self, run_id: str) -> RunRecord | None:
        """The latest record of ``run_id``, or ``None`` if it was never written."""
        if not self.has_tables(["runs"]):
            return None  # nothing recorded yet (and asking creates nothing)
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
        self.write_schema_files()
        self.quarantine_damaged()
        return self._root.build_catalog(wait_s=self.lock_wait_s)

    def migrate(self) -> list[str]:
        """Apply the named migrations this root lacks (see ``migrations``)."""
        self._migrated = True  # first: a migration writes rows through this store
        return migrations.migrate(self)

    def compact(self, run_id: str | None = None, *, grace_s: float = compaction.GRACE_S) -> int:
        """Merge small parts of ``run_id`` (or of every run); returns the parts written.

        Readers never see a folder's rows missing or doubled while this runs.
        """
        return self._root.compact(run_id, grace_s=grace_s)

    def part_files(self) -> list[PurePath]:
        """Every part file under the table folders (whole or not).

        Local paths, or for a remote root the objects' paths relative to it.
        """
        return self._root.part_files()

    def damaged_parts(self) -> list[PurePath]:
        """Parts, relative to the root, that are not whole Parquet files (not yet moved)."""
        return self._root.damaged_parts()

    def quarantine_damaged(self) -> list[PurePath]:
        """Move parts that are not whole Parquet files to ``_quarantine/``; returns new paths."""
        return quarantine_damaged(self._root)

    def quarantined(self) -> list[PurePath]:
        """Parts moved aside as damaged, relative to the root."""
        return self._root.quarantined()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> QueryResult:
        """Run a user's SQL: one read-only statement, able to read files under root only.

        Raises ``ReadOnlyQueryError`` for anything that writes or reaches outside the
        root, ``QueryError`` for any other failure, ``CatalogLockedError`` if the catalog
        stays locked.
        """
        catalog.check_read_only(sql)
        path = self.catalog_path  # only a folder has a catalog file to keep current
        if path is not None and catalog.built_for(path, wait_s=self.lock_wait_s) != str(self.root):
            # Missing, or copied here from another root: its views are rebuilt. A query
            # adds no rows (no migration, no recovery: that is what commands that write do).
            self.write_schema_files()
            self._root.build_catalog(wait_s=self.lock_wait_s)
        names = catalog.tables_named_in(sql)  # a consistent snapshot of the parts they read
        try:
            with self._root.sandboxed(names, wait_s=self.lock_wait_s) as con:
                return catalog.run(con, sql, params)
        except duckdb.Error as exc:
            raise catalog.user_error(exc, self.root) from exc

    def read(self, sql: str, params: Sequence[Any] | None = None) -> QueryResult:
        """Run trusted SQL of the pipeline over the same views, without the sandbox.

        Uses a private in-memory DuckDB holding the views (for the tables ``sql`` names:
        binding a view reads every part's footer), so it works before the first refresh
        and never waits for the catalog file's lock. A read that fails is tried once more
        if damaged parts were found and moved aside; else ``QueryError``.
        """
        return self._trusted(catalog.run, sql, params)

    def read_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """``read``, with the rows as Arrow: for results too large to fetch as tuples."""
        return self._trusted(catalog.run_arrow, sql, params)

    def _trusted(
        self,
        fetch: Callable[[duckdb.DuckDBPyConnection, str, Sequence[Any] | None], T],
        sql: str,
        params: Sequence[Any] | None,
    ) -> T:
        names = catalog.tables_named_in(sql)
        for attempt in (1, 2):
            try:
                with self._root.reader(names) as con:
                    return fetch(con, sql, params)
            except duckdb.Error as exc:  # a damaged part (maybe since the listing): move it
                if attempt == 2 or not self.quarantine_damaged():
                    raise catalog.QueryError(f"store read failed: {exc}") from exc
        raise AssertionError("unreachable")

    def write_schema_files(self) -> None:
        """Write each table's zero-row ``_schema.parquet`` where it is missing or outdated."""
        self._root.write_schema_files()
