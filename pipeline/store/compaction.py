"""Compaction: a run's many small parts become a few large ones, never missing or doubled.

Each batch commits its own parts, so a long run leaves thousands of small files per
table; every query then opens every footer. ``compact_folder`` merges the parts of one
``<table>/<run_id>`` folder into parts of up to ``TARGET_BYTES``:

1. the merged rows are written to a hidden temp file whose Parquet footer lists the
   parts it replaces (key ``docroute.replaces``); merged parts end in ``-m.parquet``;
2. one atomic rename makes it visible: from that instant readers leave out every part
   a visible merged part replaces. docroute's readers take one listing of the folder
   (``visible_parts``) and decide from it, so they see either the old parts or the
   merged one, never both and never neither;
3. the replaced files are deleted only ``GRACE_S`` later (``collect_garbage``), so a
   reader that listed them just before the switch can still open them. A crash at any
   point leaves either the old parts alone or the merged part with hidden leftovers.

Rows are copied batch by batch through one ``ParquetWriter``, so memory stays at one
part's row group, not the folder's size.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from .parts import fsync_dir, is_whole, next_seq

T = TypeVar("T")

REPLACES_KEY = b"docroute.replaces"
MERGED_SUFFIX = "-m.parquet"
#: Merged parts grow up to about this size; parts already half as big are left alone.
TARGET_BYTES = 256 * 1024 * 1024
#: Seconds a replaced part stays on disk (hidden) after the switch, for readers in flight.
GRACE_S = 600.0


def replaced_by(path: Path) -> list[str]:
    """The part names (in the same folder) that the merged part at ``path`` replaces."""
    if not path.name.endswith(MERGED_SUFFIX) or not is_whole(path):
        return []
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(REPLACES_KEY)
    return list(json.loads(raw)) if raw else []


def visible_parts(folder: Path) -> list[Path]:
    """The parts of ``folder`` a reader should read: one listing, minus replaced parts."""
    with os.scandir(folder) as entries:
        names = sorted(
            e.name for e in entries if e.name.startswith("part-") and e.name.endswith(".parquet")
        )
    return [folder / name for name in without_replaced(names, lambda n: replaced_by(folder / n))]


def without_replaced(names: list[str], replaced_of: Callable[[str], list[str]]) -> list[str]:
    """``names`` minus those a merged part among them replaces (``replaced_of(merged)``)."""
    merged = [name for name in names if name.endswith(MERGED_SUFFIX)]
    hidden = {gone for name in merged for gone in replaced_of(name)}
    return [name for name in names if name not in hidden]


def collect_garbage(folder: Path, *, grace_s: float = GRACE_S) -> int:
    """Delete parts replaced by a merged part older than ``grace_s``; returns how many."""
    gone = 0
    now = time.time()
    for part in sorted(folder.glob("part-*" + MERGED_SUFFIX)):
        try:
            if now - part.stat().st_mtime < grace_s:
                continue
        except FileNotFoundError:
            continue
        for name in replaced_by(part):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
                gone += 1
    if gone:
        fsync_dir(folder)
    return gone


def compact_folder(
    folder: Path, schema: pa.Schema, *, min_parts: int = 2, grace_s: float = GRACE_S
) -> list[Path]:
    """Merge the visible parts of ``folder`` (one table, one run); returns the parts written.

    ``schema`` is the table's current schema: older parts missing a column get nulls.
    Parts that are not whole (see ``is_whole``) are left untouched for the audit.
    """
    if not folder.is_dir():
        return []
    collect_garbage(folder, grace_s=grace_s)
    parts = [p for p in visible_parts(folder) if is_whole(p)]
    small = [p for p in parts if p.stat().st_size < TARGET_BYTES // 2]
    return [_merge(folder, group, schema) for group in _groups(small) if len(group) >= min_parts]


def _groups(parts: list[Path]) -> list[list[Path]]:
    return groups_of([(part, part.stat().st_size) for part in parts])


def groups_of(sized: list[tuple[T, int]]) -> list[list[T]]:
    """Consecutive items in groups of up to ``TARGET_BYTES`` (by their given sizes)."""
    groups: list[list[T]] = [[]]
    size = 0
    for part, part_size in sized:
        if groups[-1] and size + part_size > TARGET_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(part)
        size += part_size
    return groups


def _merge(folder: Path, group: list[Path], schema: pa.Schema) -> Path:
    meta = {REPLACES_KEY: json.dumps([p.name for p in group]).encode()}
    target_schema = schema.with_metadata(meta)
    final = folder / f"part-{next_seq(folder):08d}-{uuid.uuid4().hex[:8]}{MERGED_SUFFIX}"
    tmp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as fh:
            with pq.ParquetWriter(fh, target_schema, compression="zstd") as writer:
                for part in group:
                    source = pq.ParquetFile(part)
                    for batch in source.iter_batches(batch_size=65_536):
                        writer.write_table(conform(pa.Table.from_batches([batch]), schema))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)  # the switch: new part visible, the group hidden
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(folder)
    return final


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in order: missing ones null, types cast."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)
