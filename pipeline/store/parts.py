"""Crash-safe Parquet parts: a part is either wholly visible or absent.

A part is written under a temporary name that no reader glob matches
(``.part-….parquet.<hex>.tmp``: a leading dot and a ``.tmp`` suffix), flushed and fsynced,
renamed into place with ``os.replace`` (atomic within one folder), and then the folder
itself is fsynced so the rename survives a power cut. Files are never rewritten::

    >>> import pyarrow as pa, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "results" / "run-1"
    >>> path = write_part(folder, pa.table({"x": [1, 2]}))
    >>> path.name.startswith("part-00000001-"), [p.name for p in folder.iterdir()] == [path.name]
    (True, True)

A crash between the temp write and the rename leaves a ``.part-….parquet.<hex>.tmp`` file that
no view reads; it is safe to delete once its writer is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

#: Parts and the schema file end in ``.parquet``; temp files never do.
PART_GLOB = "part-*.parquet"
SCHEMA_FILE = "_schema.parquet"
_PART_SEQ = re.compile(r"^part-(\d+)-")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is safe as a plain folder name, else ``ValueError``.

    Letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit: no path
    separators, no ``..``, no hive-style ``k=v``, and never ``_schema``-like names.
    """
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(
            f"run_id {run_id!r} is not a valid folder name "
            "(letters, digits, '.', '_', '-'; starting with a letter or digit)"
        )
    return run_id


def write_part(folder: Path, table: pa.Table) -> Path:
    """Write ``table`` as the next ``part-<seq>-<uuid8>.parquet`` in ``folder``, atomically."""
    ensure_dir(folder)
    name = f"part-{next_seq(folder):08d}-{uuid.uuid4().hex[:8]}.parquet"
    final = folder / name
    write_atomic(final, table)
    return final


def is_whole(path: Path) -> bool:
    """Whether ``path`` ends like a complete Parquet file (footer length and ``PAR1``).

    A truncated or half-copied file fails this; it costs one small read.
    """
    try:
        size = path.stat().st_size
        if size < 12:
            return False
        with open(path, "rb") as fh:
            fh.seek(size - 8)
            tail = fh.read(8)
    except OSError:
        return False
    return whole_tail(tail, size)


def whole_tail(tail: bytes, size: int) -> bool:
    """Whether the last 8 bytes of a ``size``-byte file end a Parquet file (footer + ``PAR1``)."""
    footer = int.from_bytes(tail[:4], "little")
    return len(tail) == 8 and tail[4:] == b"PAR1" and footer + 12 <= size


def next_seq(folder: Path) -> int:
    """One more than the highest part number in ``folder`` (1 for an empty folder).

    Two writers racing may pick the same number; the uuid suffix keeps their names
    distinct, and the number only orders parts for people reading the folder.
    """
    with os.scandir(folder) as entries:
        return seq_after(entry.name for entry in entries)


def seq_after(names: Iterable[str]) -> int:
    """One more than the highest part number among ``names`` (1 when there is none)."""
    highest = 0
    for name in names:
        match = _PART_SEQ.match(name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def write_atomic(final: Path, table: pa.Table) -> None:
    """Write ``table`` to ``final`` through a hidden temp file, fsync, rename, fsync dir."""
    # Unique per writer, and never matched by a reader's ``*.parquet`` glob.
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


def write_schema_file(folder: Path, schema: pa.Schema) -> Path:
    """Keep a zero-row ``_schema.parquet`` in ``folder`` so a view over it always binds.

    Rewritten (atomically) only when the schema changed; it holds no rows, so replacing
    it never hides data.
    """
    ensure_dir(folder)
    path = folder / SCHEMA_FILE
    if path.exists() and pq.read_schema(path).equals(schema, check_metadata=False):
        return path
    write_atomic(path, schema.empty_table())
    return path


def ensure_dir(folder: Path) -> None:
    """``mkdir -p folder``, fsyncing the parent of every folder it creates."""
    if folder.is_dir():
        return
    ensure_dir(folder.parent)
    with contextlib.suppress(FileExistsError):
        folder.mkdir()
        fsync_dir(folder.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or create in ``folder`` durable (a no-op where folders can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
