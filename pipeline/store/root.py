"""``Root``: what ``Store`` needs from the place it keeps data, a folder or an object store.

Two implementations: ``local.LocalRoot`` (a folder: temp file, fsync, ``os.replace``, the
``catalog.duckdb`` file) and ``remote.RemoteRoot`` (a URI over ``pyarrow.fs``: one PUT
per part, copy + delete for a move, no catalog file). ``Store`` holds one and keeps the
tables' rules (schemas, run ids, migrations, run records, which SQL may run)::

    root: Root = LocalRoot(Path("out"))
    root.write_part("ledger", "r1", arrow_table)      # out/ledger/r1/part-00000001-….parquet
    moved = quarantine_damaged(root)                  # parts that are not whole, moved aside
    with root.reader(["ledger"]) as con:              # in-memory DuckDB, one view per table
        con.execute("SELECT count(*) FROM ledger").fetchone()

Files are named the way ``part_files`` names them: a folder's as absolute paths, an
object store's relative to the root.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs as pafs

    from .fs import RootURI

log = logging.getLogger(__name__)

#: Where damaged parts go: ``<root>/_quarantine/<table>/<run_id>/<part>``.
QUARANTINE_DIR = "_quarantine"


class Root(Protocol):
    """The layout ``<table>/<run_id>/part-*.parquet`` kept in one place."""

    @property
    def location(self) -> Path | RootURI:
        """The root as people see it (``Store.root``): a resolved folder, or the URI."""
        ...

    @property
    def state_dir(self) -> Path:
        """The local folder for journals, run locks and the migrations lock."""
        ...

    @property
    def catalog_path(self) -> Path | None:
        """``<root>/catalog.duckdb``, or ``None`` where the root keeps no catalog file."""
        ...

    def has_data(self) -> bool:
        """Whether docroute has written here."""
        ...

    def list_dirs(self, rel: str) -> list[str]:
        """Sorted names of the folders in ``rel`` (``""``: the root); none if it is missing."""
        ...

    def write_part(self, table: str, run_id: str, rows: pa.Table) -> Path | str:
        """Write ``rows`` as the next part of ``<table>/<run_id>``, whole or absent; its path."""
        ...

    def write_schema_files(self) -> None:
        """Write each table's zero-row ``_schema.parquet`` where it is missing or outdated."""
        ...

    def part_files(self) -> list[PurePath]:
        """Every part file under the table folders (whole or not)."""
        ...

    def damaged_parts(self) -> list[PurePath]:
        """Parts, relative to the root, that are not whole Parquet files."""
        ...

    def quarantine(self, part: PurePath) -> PurePath:
        """Move ``part`` (relative to the root) under ``_quarantine/``; its new file."""
        ...

    def quarantined(self) -> list[PurePath]:
        """Parts moved aside as damaged, relative to the root, sorted."""
        ...

    def compact(self, run_id: str | None, *, grace_s: float) -> int:
        """Merge small parts of ``run_id`` (or of every run); the merged parts written."""
        ...

    def read_run(self, table: str, run_id: str, where: pc.Expression | None = None) -> pa.Table:
        """The visible rows of ``<table>/<run_id>`` (``where``: only those), in the
        table's schema; an empty table if the run has no parts."""
        ...

    def build_catalog(self, *, wait_s: float) -> Path | None:
        """(Re)create the views of ``catalog_path``; ``None`` where there is no such file."""
        ...

    def reader(self, names: Sequence[str]) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB whose views ``names`` (and the tables they need) read a
        snapshot of the visible parts; the caller closes it."""
        ...

    def sandboxed(
        self, names: Sequence[str], *, wait_s: float
    ) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A read-only connection with the views ``names``, able to read nothing else
        (``catalog.sandbox``): for users' SQL."""
        ...


def read_dataset(
    paths: Sequence[str],
    schema: pa.Schema,
    where: pc.Expression | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> pa.Table:
    """The rows of the Parquet ``paths`` in ``schema`` (columns a part lacks read as null)."""
    import pyarrow.dataset as ds

    if not paths:
        return schema.empty_table()
    dataset = ds.FileSystemDataset.from_paths(
        list(paths),
        schema=schema,
        format=ds.ParquetFileFormat(),
        filesystem=filesystem or _local_fs(),
    )
    return dataset.to_table(filter=where)


def _local_fs() -> pafs.FileSystem:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def quarantine_damaged(root: Root) -> list[PurePath]:
    """Move the parts of ``root`` that are not whole Parquet files aside; their new files."""
    moved: list[PurePath] = []
    for part in root.damaged_parts():
        target = root.quarantine(part)
        moved.append(target)
        log.warning(
            "moved a damaged part (not a whole Parquet file) out of the way: %s → %s; "
            "`docroute audit` lists it",
            root.location / str(part),
            root.location / str(target),
        )
    return moved
