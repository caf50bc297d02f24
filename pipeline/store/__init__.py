"""Crash-safe Parquet parts, DuckDB views over them, and read-only SQL for users.

    from pipeline.store import Store, render

    store = Store(Path("out"))
    store.write_rows("ledger", run_id, entries)
    store.refresh_catalog()
    print(render(store.query("SELECT outcome, count(*) FROM ledger GROUP BY ALL"), "table"))

See ``store.py`` for the layout and its layers (``Store`` over one ``root.Root``: a
folder's ``local.LocalRoot`` or an object store's ``remote.RemoteRoot``), and
``catalog.py`` for what user SQL may do.
"""

from .catalog import CatalogLockedError, QueryError, QueryResult, ReadOnlyQueryError, StoreError
from .render import render
from .runs import DocumentRow, PriceRow, RunRecord, RunStatus
from .store import Store
from .tables import SCHEMAS, TABLES

__all__ = [
    "SCHEMAS",
    "TABLES",
    "CatalogLockedError",
    "DocumentRow",
    "PriceRow",
    "QueryError",
    "QueryResult",
    "ReadOnlyQueryError",
    "RunRecord",
    "RunStatus",
    "Store",
    "StoreError",
    "render",
]
