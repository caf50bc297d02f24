"""The store's operations on an object-store root (see ``fs.RemoteRoot``).

The same layout and rules as a local root, through object operations: a part is one
PUT under its final name (whole or absent); compaction's merged part lists the parts it
replaces in its footer and becomes visible when its upload completes; the replaced parts
are deleted ``GRACE_S`` after the merged part's modification time; a damaged part is
moved (copied, then deleted) to ``_quarantine/``.

Readers never need DuckDB's ``httpfs``: :func:`reader` lists each table once, keeps the
visible parts (``compaction.without_replaced``) and registers them in an in-memory DuckDB
as pyarrow datasets with the table's current schema (older parts read missing columns as
NULL), then defines the usual views on top::

    con = reader(root, ["results", "runs"])
    con.execute("SELECT count(*) FROM results").fetchone()
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import PurePosixPath

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import catalog
from .compaction import (
    GRACE_S,
    MERGED_SUFFIX,
    REPLACES_KEY,
    TARGET_BYTES,
    conform,
    groups_of,
    without_replaced,
)
from .fs import RemoteRoot, spool
from .parts import PART_GLOB, SCHEMA_FILE, seq_after, whole_tail
from .tables import SCHEMAS, TABLES

_PART_PREFIX, _PART_SUFFIX = PART_GLOB.split("*")


def write_part(root: RemoteRoot, folder: str, table: pa.Table) -> str:
    """Put ``table`` as the next ``part-<seq>-<uuid8>.parquet`` of ``folder``; its path."""
    names = [i.base_name for i in root.list_files(folder, recursive=False)]
    rel = f"{folder}/part-{seq_after(names):08d}-{uuid.uuid4().hex[:8]}.parquet"
    root.put_table(rel, table)
    return root.path(rel)


def write_schema_file(root: RemoteRoot, table: str) -> None:
    """Keep ``<table>/_schema.parquet`` current (for other DuckDB clients' glob views)."""
    rel = f"{table}/{SCHEMA_FILE}"
    schema = SCHEMAS[table]
    if root.exists(rel) and root.read_schema(rel).equals(schema, check_metadata=False):
        return
    root.put_table(rel, schema.empty_table())


def is_part(info: pafs.FileInfo) -> bool:
    name = info.base_name
    return name.startswith(_PART_PREFIX) and name.endswith(_PART_SUFFIX)


def part_infos(root: RemoteRoot, table: str) -> dict[str, list[pafs.FileInfo]]:
    """Run folder → its part files, from one listing of the table, sorted by name."""
    runs: dict[str, list[pafs.FileInfo]] = defaultdict(list)
    for info in root.list_files(table):
        rel = PurePosixPath(root.rel(info.path))
        if len(rel.parts) == 3 and is_part(info) and not rel.parts[1].startswith("."):
            runs[rel.parts[1]].append(info)
    return {run: sorted(infos, key=lambda i: i.base_name) for run, infos in sorted(runs.items())}


def is_whole(root: RemoteRoot, info: pafs.FileInfo) -> bool:
    """Whether the object ends like a complete Parquet file (one small ranged read)."""
    size = info.size or 0
    if size < 12:
        return False
    try:
        return whole_tail(root.tail(root.rel(info.path), size, 8), size)
    except OSError:
        return False


def replaced_by(root: RemoteRoot, info: pafs.FileInfo) -> list[str]:
    """The part names a merged part replaces (empty for an ordinary or damaged part)."""
    if not info.base_name.endswith(MERGED_SUFFIX) or not is_whole(root, info):
        return []
    raw = (root.read_schema(root.rel(info.path)).metadata or {}).get(REPLACES_KEY)
    return list(json.loads(raw)) if raw else []


def visible(root: RemoteRoot, infos: list[pafs.FileInfo]) -> list[pafs.FileInfo]:
    """The parts of one folder's listing a reader should read (replaced ones left out)."""
    by_name = {i.base_name: i for i in infos}
    names = without_replaced(sorted(by_name), lambda n: replaced_by(root, by_name[n]))
    return [by_name[name] for name in names]


def visible_paths(root: RemoteRoot, table: str) -> list[str]:
    """Every visible part of ``table``, from one listing."""
    return [i.path for infos in part_infos(root, table).values() for i in visible(root, infos)]


# -- compaction -------------------------------------------------------------------------------


def collect_garbage(root: RemoteRoot, infos: list[pafs.FileInfo], grace_s: float) -> int:
    """Delete parts replaced by a merged part uploaded more than ``grace_s`` ago."""
    gone = 0
    now = time.time()
    folder = root.rel(infos[0].path).rpartition("/")[0] if infos else ""
    for info in infos:
        if not info.base_name.endswith(MERGED_SUFFIX) or info.mtime is None:
            continue
        if now - info.mtime.timestamp() < grace_s:
            continue
        for name in replaced_by(root, info):
            gone += root.delete(f"{folder}/{name}")
    return gone


def compact_folder(
    root: RemoteRoot, folder: str, schema: pa.Schema, *, grace_s: float = GRACE_S
) -> list[str]:
    """Merge the visible whole parts of ``folder`` (``<table>/<run_id>``); the parts written."""
    infos = [i for i in root.list_files(folder, recursive=False) if is_part(i)]
    if collect_garbage(root, infos, grace_s):
        infos = [i for i in root.list_files(folder, recursive=False) if is_part(i)]
    parts = [i for i in visible(root, infos) if is_whole(root, i)]
    small = [(i, i.size or 0) for i in parts if (i.size or 0) < TARGET_BYTES // 2]
    names = [i.base_name for i in infos]
    written = []
    for group in groups_of(small):
        if len(group) >= 2:
            written.append(_merge(root, folder, group, schema, seq_after(names)))
            names.append(PurePosixPath(written[-1]).name)
    return written


def _merge(
    root: RemoteRoot, folder: str, group: list[pafs.FileInfo], schema: pa.Schema, seq: int
) -> str:
    meta = {REPLACES_KEY: json.dumps([i.base_name for i in group]).encode()}
    rel = f"{folder}/part-{seq:08d}-{uuid.uuid4().hex[:8]}{MERGED_SUFFIX}"
    with spool() as scratch:  # built locally; the upload's completion is the switch
        with pq.ParquetWriter(scratch, schema.with_metadata(meta), compression="zstd") as writer:
            for info in group:
                source = pq.ParquetFile(info.path, filesystem=root.fs)
                for batch in source.iter_batches(batch_size=65_536):
                    writer.write_table(conform(pa.Table.from_batches([batch]), schema))
        root.upload(rel, scratch)
    return root.path(rel)


def compact(root: RemoteRoot, run_id: str | None, *, grace_s: float = GRACE_S) -> int:
    """``Store.compact`` on a remote root: merged parts written, any run's leftovers removed."""
    written = 0
    for table in TABLES:
        runs = root.list_dirs(table)
        for run in [run_id] if run_id else runs:
            written += len(compact_folder(root, f"{table}/{run}", SCHEMAS[table], grace_s=grace_s))
        for run in runs:
            infos = [i for i in root.list_files(f"{table}/{run}", recursive=False) if is_part(i)]
            collect_garbage(root, infos, grace_s)
    return written


# -- damaged parts ----------------------------------------------------------------------------


def damaged(root: RemoteRoot) -> list[str]:
    """Parts (relative to the root) that are not whole Parquet files."""
    return [
        root.rel(info.path)
        for table in TABLES
        for infos in part_infos(root, table).values()
        for info in infos
        if not is_whole(root, info)
    ]


# -- reading ----------------------------------------------------------------------------------


def reader(root: RemoteRoot, names: Sequence[str]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose views ``names`` (and the tables they need) read the root."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for table in catalog.stored_tables_for(names):
            source = f"docroute_{table}_parts"
            paths = visible_paths(root, table)
            if table == "runs":
                con.register(source, _runs_with_filenames(root, paths))
                body = f"SELECT * EXCLUDE (filename) FROM {source} {catalog.LATEST_RUN}"
            else:
                con.register(source, _dataset(root, table, paths))
                body = f"SELECT * FROM {source}"
            con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {body}")
        for statement in catalog.derived_statements(names):
            con.execute(statement)
    except BaseException:
        con.close()
        raise
    return con


def _dataset(root: RemoteRoot, table: str, paths: list[str]) -> ds.Dataset:
    return ds.FileSystemDataset.from_paths(
        paths, schema=SCHEMAS[table], format=ds.ParquetFileFormat(), filesystem=root.fs
    )


def _runs_with_filenames(root: RemoteRoot, paths: list[str]) -> pa.Table:
    """Run records with the part name of each (it breaks ``updated_at`` ties)."""
    schema = SCHEMAS["runs"]
    tables = []
    for path in paths:
        rows = conform(pq.read_table(path, filesystem=root.fs), schema)
        tables.append(rows.append_column("filename", pa.array([path] * rows.num_rows)))
    if not tables:
        return schema.empty_table().append_column("filename", pa.array([], pa.string()))
    return pa.concat_tables(tables)
