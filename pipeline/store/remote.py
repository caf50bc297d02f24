"""``RemoteRoot``: the ``Root`` of an object-store URI (an ``fs.ObjectStore`` that keeps parts).

The same layout and rules as a local root, through object operations: a part is one
PUT under its final name (whole or absent); compaction's merged part lists the parts it
replaces in its footer and becomes visible when its upload completes; the replaced parts
are deleted ``GRACE_S`` after the merged part's modification time; a damaged part is
moved (copied, then deleted) to ``_quarantine/``. There is no catalog file.

Readers never need DuckDB's ``httpfs``: :meth:`RemoteRoot.reader` lists each table once,
keeps the visible parts (``compaction.without_replaced``) and registers them in an
in-memory DuckDB as pyarrow datasets with the table's current schema (older parts read
missing columns as NULL), then defines the usual views on top::

    root = RemoteRoot.open("s3://bucket/docroute?region=eu-central-1")
    root.check()                          # bucket reachable, credentials present
    with root.reader(["results", "runs"]) as con:
        con.execute("SELECT count(*) FROM results").fetchone()
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import PurePath, PurePosixPath

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import catalog
from .compaction import (
    MERGED_SUFFIX,
    REPLACES_KEY,
    TARGET_BYTES,
    conform,
    groups_of,
    without_replaced,
)
from .fs import ObjectStore, RootURI, spool
from .migrations import STATE_FILE
from .parts import PART_GLOB, SCHEMA_FILE, seq_after, whole_tail
from .root import QUARANTINE_DIR, quarantine_damaged, read_dataset
from .tables import SCHEMAS, TABLES

_PART_PREFIX, _PART_SUFFIX = PART_GLOB.split("*")


def is_part(info: pafs.FileInfo) -> bool:
    name = info.base_name
    return name.startswith(_PART_PREFIX) and name.endswith(_PART_SUFFIX)


class RemoteRoot(ObjectStore):
    """An object-store root: the ``Root`` operations over ``ObjectStore``'s objects."""

    __slots__ = ()

    @property
    def location(self) -> RootURI:
        return self.uri

    @property
    def catalog_path(self) -> None:
        return None

    def has_data(self) -> bool:
        """Whether the root has its migrations file (written before any part)."""
        return self.exists(STATE_FILE)

    # -- writing ----------------------------------------------------------------------------

    def write_part(self, table: str, run_id: str, rows: pa.Table) -> str:
        """Put ``rows`` as the next ``part-<seq>-<uuid8>.parquet`` of the run's folder."""
        folder = f"{table}/{run_id}"
        names = [i.base_name for i in self.list_files(folder, recursive=False)]
        rel = f"{folder}/part-{seq_after(names):08d}-{uuid.uuid4().hex[:8]}.parquet"
        self.put_table(rel, rows)
        return self.path(rel)

    def write_schema_files(self) -> None:
        """Keep ``<table>/_schema.parquet`` current (for other DuckDB clients' glob views)."""
        for table in TABLES:
            rel = f"{table}/{SCHEMA_FILE}"
            schema = SCHEMAS[table]
            if self.exists(rel) and self.read_schema(rel).equals(schema, check_metadata=False):
                continue
            self.put_table(rel, schema.empty_table())

    # -- parts ------------------------------------------------------------------------------

    def part_infos(self, table: str) -> dict[str, list[pafs.FileInfo]]:
        """Run folder → its part files, from one listing of the table, sorted by name."""
        runs: dict[str, list[pafs.FileInfo]] = defaultdict(list)
        for info in self.list_files(table):
            rel = PurePosixPath(self.rel(info.path))
            if len(rel.parts) == 3 and is_part(info) and not rel.parts[1].startswith("."):
                runs[rel.parts[1]].append(info)
        return {
            run: sorted(infos, key=lambda i: i.base_name) for run, infos in sorted(runs.items())
        }

    def part_files(self) -> list[PurePath]:
        """The objects' paths relative to the root."""
        return [
            PurePosixPath(self.rel(info.path))
            for table in TABLES
            for infos in self.part_infos(table).values()
            for info in infos
        ]

    def is_whole(self, info: pafs.FileInfo) -> bool:
        """Whether the object ends like a complete Parquet file (one small ranged read)."""
        size = info.size or 0
        if size < 12:
            return False
        try:
            return whole_tail(self.tail(self.rel(info.path), size, 8), size)
        except OSError:
            return False

    def replaced_by(self, info: pafs.FileInfo) -> list[str]:
        """The part names a merged part replaces (empty for an ordinary or damaged part)."""
        if not info.base_name.endswith(MERGED_SUFFIX) or not self.is_whole(info):
            return []
        raw = (self.read_schema(self.rel(info.path)).metadata or {}).get(REPLACES_KEY)
        return list(json.loads(raw)) if raw else []

    def visible(self, infos: list[pafs.FileInfo]) -> list[pafs.FileInfo]:
        """The parts of one folder's listing a reader should read (replaced ones left out)."""
        by_name = {i.base_name: i for i in infos}
        names = without_replaced(sorted(by_name), lambda n: self.replaced_by(by_name[n]))
        return [by_name[name] for name in names]

    def visible_paths(self, table: str) -> list[str]:
        """Every visible part of ``table``, from one listing."""
        return [i.path for infos in self.part_infos(table).values() for i in self.visible(infos)]

    # -- damaged parts ----------------------------------------------------------------------

    def damaged_parts(self) -> list[PurePath]:
        return [
            PurePosixPath(self.rel(info.path))
            for table in TABLES
            for infos in self.part_infos(table).values()
            for info in infos
            if not self.is_whole(info)
        ]

    def quarantine(self, part: PurePath) -> PurePosixPath:
        """Copy ``part`` under ``_quarantine/``, then delete it; the new path (relative)."""
        target = f"{QUARANTINE_DIR}/{part}"
        self.move(str(part), target)
        return PurePosixPath(target)

    def quarantined(self) -> list[PurePath]:
        return sorted(PurePosixPath(self.rel(i.path)) for i in self.list_files(QUARANTINE_DIR))

    # -- compaction -------------------------------------------------------------------------

    def compact(self, run_id: str | None, *, grace_s: float) -> int:
        """Merged parts written for ``run_id`` (or every run); any run's leftovers removed."""
        written = 0
        for table in TABLES:
            runs = self.list_dirs(table)
            for run in [run_id] if run_id else runs:
                folder = f"{table}/{run}"
                written += len(self.compact_folder(folder, SCHEMAS[table], grace_s=grace_s))
            for run in runs:
                self.collect_garbage(self._parts_in(f"{table}/{run}"), grace_s)
        return written

    def _parts_in(self, folder: str) -> list[pafs.FileInfo]:
        return [i for i in self.list_files(folder, recursive=False) if is_part(i)]

    def collect_garbage(self, infos: list[pafs.FileInfo], grace_s: float) -> int:
        """Delete parts replaced by a merged part uploaded more than ``grace_s`` ago."""
        gone = 0
        now = time.time()
        folder = self.rel(infos[0].path).rpartition("/")[0] if infos else ""
        for info in infos:
            if not info.base_name.endswith(MERGED_SUFFIX) or info.mtime is None:
                continue
            if now - info.mtime.timestamp() < grace_s:
                continue
            for name in self.replaced_by(info):
                gone += self.delete(f"{folder}/{name}")
        return gone

    def compact_folder(self, folder: str, schema: pa.Schema, *, grace_s: float) -> list[str]:
        """Merge the visible whole parts of ``folder`` (``<table>/<run_id>``); parts written."""
        infos = self._parts_in(folder)
        if self.collect_garbage(infos, grace_s):
            infos = self._parts_in(folder)
        whole = [i for i in self.visible(infos) if self.is_whole(i)]
        small = [(i, i.size or 0) for i in whole if (i.size or 0) < TARGET_BYTES // 2]
        names = [i.base_name for i in infos]
        written = []
        for group in groups_of(small):
            if len(group) >= 2:
                written.append(self._merge(folder, group, schema, seq_after(names)))
                names.append(PurePosixPath(written[-1]).name)
        return written

    def _merge(self, folder: str, group: list[pafs.FileInfo], schema: pa.Schema, seq: int) -> str:
        meta = {REPLACES_KEY: json.dumps([i.base_name for i in group]).encode()}
        rel = f"{folder}/part-{seq:08d}-{uuid.uuid4().hex[:8]}{MERGED_SUFFIX}"
        with spool() as scratch:  # built locally; the upload's completion is the switch
            target = schema.with_metadata(meta)
            with pq.ParquetWriter(scratch, target, compression="zstd") as writer:
                for info in group:
                    source = pq.ParquetFile(info.path, filesystem=self.fs)
                    for batch in source.iter_batches(batch_size=65_536):
                        writer.write_table(conform(pa.Table.from_batches([batch]), schema))
            self.upload(rel, scratch)
        return self.path(rel)

    # -- reading ----------------------------------------------------------------------------

    def build_catalog(self, *, wait_s: float) -> None:
        """No catalog file: docroute's readers build their views in memory."""
        return None

    def reader(self, names: Sequence[str]) -> duckdb.DuckDBPyConnection:
        """Views over in-memory datasets. A part that fails to read is taken for damaged:
        damaged parts are moved aside and the reader built once more (``QueryError`` when
        none was damaged)."""
        try:
            return self._reader(names)
        except (pa.ArrowException, OSError) as exc:
            if not quarantine_damaged(self):
                raise catalog.QueryError(f"reading {self.uri} failed: {exc}") from exc
            return self._reader(names)

    @contextmanager
    def sandboxed(
        self, names: Sequence[str], *, wait_s: float
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """The reader's views, then no file access: registered datasets only, no extension."""
        con = self.reader(names)
        try:
            catalog.sandbox(con, None)
            yield con
        finally:
            con.close()

    def _reader(self, names: Sequence[str]) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            for table in catalog.stored_tables_for(names):
                source = f"docroute_{table}_parts"
                paths = self.visible_paths(table)
                if table == "runs":
                    con.register(source, self._runs_with_filenames(paths))
                    body = f"SELECT * EXCLUDE (filename) FROM {source} {catalog.LATEST_RUN}"
                else:
                    con.register(source, self._dataset(table, paths))
                    body = f"SELECT * FROM {source}"
                con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {body}")
            for statement in catalog.derived_statements(names):
                con.execute(statement)
        except BaseException:
            con.close()
            raise
        return con

    def read_run(self, table: str, run_id: str, where: pc.Expression | None = None) -> pa.Table:
        infos = sorted(self._parts_in(f"{table}/{run_id}"), key=lambda i: i.base_name)
        paths = [i.path for i in self.visible(infos)]
        return read_dataset(paths, SCHEMAS[table], where, filesystem=self.fs)

    def _dataset(self, table: str, paths: list[str]) -> ds.Dataset:
        return ds.FileSystemDataset.from_paths(
            paths, schema=SCHEMAS[table], format=ds.ParquetFileFormat(), filesystem=self.fs
        )

    def _runs_with_filenames(self, paths: list[str]) -> pa.Table:
        """Run records with the part name of each (it breaks ``updated_at`` ties)."""
        schema = SCHEMAS["runs"]
        tables = []
        for path in paths:
            rows = conform(pq.read_table(path, filesystem=self.fs), schema)
            tables.append(rows.append_column("filename", pa.array([path] * rows.num_rows)))
        if not tables:
            return schema.empty_table().append_column("filename", pa.array([], pa.string()))
        return pa.concat_tables(tables)
