"""``LocalRoot``: the ``Root`` of an output folder, with its ``catalog.duckdb``.

Parts are written through ``parts`` (hidden temp file, fsync, ``os.replace``, fsync of
the folder), merged through ``compaction``, and read through ``catalog``'s views: a
snapshot of the visible parts in an in-memory DuckDB for docroute's own reads, the same
views as temporary views on the catalog file for users' SQL::

    root = LocalRoot(Path("out").resolve())
    root.write_part("results", "r1", arrow_table)     # out/results/r1/part-00000001-….parquet
    root.build_catalog(wait_s=5)                      # out/catalog.duckdb
    with root.reader(["results"]) as con:
        con.execute("SELECT count(*) FROM results").fetchone()
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from . import catalog, compaction, parts
from .root import QUARANTINE_DIR, read_dataset
from .tables import SCHEMAS, TABLES

#: Folders whose presence means docroute wrote here (besides the catalog file).
_DATA_DIRS = (*TABLES, "_journal")


@dataclass(slots=True)
class LocalRoot:
    """An output folder (absolute, resolved); journals and locks live in it too."""

    path: Path
    _schema_files_ready: bool = field(default=False, init=False, repr=False)

    @property
    def location(self) -> Path:
        return self.path

    @property
    def state_dir(self) -> Path:
        return self.path

    @property
    def catalog_path(self) -> Path:
        return self.path / catalog.CATALOG_FILE

    def has_data(self) -> bool:
        """The catalog file, or a table's or the journals' folder.

        A first run killed before it refreshed the catalog has left its parts and journal
        but no ``catalog.duckdb``: that is data too (reading it recovers the run).
        """
        if self.catalog_path.exists():
            return True
        return any((self.path / name).is_dir() for name in _DATA_DIRS)

    def list_dirs(self, rel: str) -> list[str]:
        folder = self.path / rel
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    def write_part(self, table: str, run_id: str, rows: pa.Table) -> Path:
        return parts.write_part(self.path / table / run_id, rows)

    def write_schema_files(self) -> None:
        for table in TABLES:
            parts.write_schema_file(self.path / table, SCHEMAS[table])
        self._schema_files_ready = True

    def part_files(self) -> list[PurePath]:
        """Absolute paths, sorted."""
        return list(self._part_paths())

    def _part_paths(self) -> list[Path]:
        return sorted(
            p for table in TABLES for p in (self.path / table).glob("*/" + parts.PART_GLOB)
        )

    def damaged_parts(self) -> list[PurePath]:
        return [p.relative_to(self.path) for p in self._part_paths() if not parts.is_whole(p)]

    def quarantine(self, part: PurePath) -> Path:
        target = self.path / QUARANTINE_DIR / part
        parts.ensure_dir(target.parent)
        os.replace(self.path / part, target)
        return target

    def quarantined(self) -> list[PurePath]:
        folder = self.path / QUARANTINE_DIR
        return sorted(p.relative_to(self.path) for p in folder.rglob("*") if p.is_file())

    def compact(self, run_id: str | None, *, grace_s: float) -> int:
        written = 0
        for table in TABLES:
            folder = self.path / table
            if not folder.is_dir():
                continue
            for run in [run_id] if run_id else self.list_dirs(table):
                merged = compaction.compact_folder(folder / run, SCHEMAS[table], grace_s=grace_s)
                written += len(merged)
            for run in self.list_dirs(table):  # leftovers of earlier compactions, any run
                compaction.collect_garbage(folder / run, grace_s=grace_s)
        return written

    def read_run(self, table: str, run_id: str, where: pc.Expression | None = None) -> pa.Table:
        folder = self.path / table / run_id
        paths = [str(p) for p in compaction.visible_parts(folder)] if folder.is_dir() else []
        return read_dataset(paths, SCHEMAS[table], where)

    def build_catalog(self, *, wait_s: float) -> Path:
        return catalog.create_catalog(self.path, wait_s=wait_s)

    def reader(self, names: Sequence[str]) -> duckdb.DuckDBPyConnection:
        """Snapshot views (``catalog.view_statements``); writes the schema files first,
        once per root object, since every view reads its table's ``_schema.parquet``."""
        if not self._schema_files_ready:
            self.write_schema_files()
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            for statement in catalog.view_statements(self.path, names, snapshot=True):
                con.execute(statement)
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def sandboxed(
        self, names: Sequence[str], *, wait_s: float
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """The catalog file, read-only, with temporary snapshot views shadowing its views
        (a consistent snapshot of the parts they read), confined to the folder."""
        with catalog.connect(self.catalog_path, read_only=True, wait_s=wait_s) as con:
            for statement in catalog.view_statements(self.path, names, snapshot=True, temp=True):
                con.execute(statement)
            catalog.sandbox(con, self.path)
            yield con
