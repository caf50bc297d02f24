"""Named, ordered migrations of an output root, so an old root opens with a newer docroute.

``<root>/_catalog.json`` lists the migrations applied to the root. ``migrate(store)``
applies the missing ones in order under an exclusive lock (``<root>/_catalog.lock``; for
an object-store root, in its local state folder, so only processes of one machine are
serialised), and refuses a root that a newer docroute has migrated further than this one knows::

    applied = migrate(store)          # e.g. ["0002_part_schemas", "0003_runs_family"]

Parts are immutable, so a migration never rewrites rows: columns a newer docroute adds
read as NULL from older parts (the views union parts by column name), and derived
values are added as new rows (a run record is append-only: its latest version wins).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .parts import ensure_dir, fsync_dir

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

STATE_FILE = "_catalog.json"
LOCK_FILE = "_catalog.lock"


class NewerRootError(Exception):
    """The root was migrated by a newer docroute than this one."""


def _baseline(store: Store) -> None:
    """The layout: ``<table>/<run_id>/part-*.parquet``; nothing to change."""


def _part_schemas(store: Store) -> None:
    """Rewrite each table's zero-row ``_schema.parquet`` with today's columns."""
    store.write_schema_files()


def _runs_family(store: Store) -> None:
    """Give runs recorded before run families their ``family_id`` (a new record version)."""
    from .runs import RunRecord

    rows = store.read("SELECT * FROM runs").to_dicts()
    records = {row["run_id"]: RunRecord.from_row(row) for row in rows}

    def family(run_id: str, seen: frozenset[str] = frozenset()) -> str:
        record = records.get(run_id)
        if record is None or record.parent_run_id is None or run_id in seen:
            return run_id
        if record.family_id:
            return record.family_id
        return family(record.parent_run_id, seen | {run_id})

    for record in records.values():
        if record.family_id is None:
            record.family_id = family(record.run_id)
            record.updated_at = 0.0
            store.write_run(record)


def _answers_index(store: Store) -> None:
    """Index the answers every run paid for so far (``answers``), one run at a time."""
    import pyarrow.compute as pc

    store.write_schema_files()
    paid = (
        (pc.field("status") == "succeeded")
        & pc.field("idem_key").is_valid()
        & pc.field("output").is_valid()
        & pc.field("reused_from").is_null()
    )
    for run_id in store.run_folders("results"):
        if store.read_run("answers", run_id).num_rows:
            continue  # indexed by a docroute that wrote it (an interrupted migration)
        rows = store.read_run("results", run_id, paid)
        store.write_rows(
            "answers",
            run_id,
            rows.select(["idem_key", "finished_at", "cost_usd", "region"]).to_pylist(),
        )


#: In order; a name is never reused or reordered once released.
MIGRATIONS: list[tuple[str, Callable[[Store], None]]] = [
    ("0001_baseline", _baseline),
    ("0002_part_schemas", _part_schemas),
    ("0003_runs_family", _runs_family),
    # ledger.batch_id and the prices' batch columns (batch jobs): older parts read as NULL.
    ("0004_batch_columns", _part_schemas),
    # The reuse index (``answers``), built from the results already on the root.
    ("0005_answers_index", _answers_index),
]


def applied(store: Store) -> list[str]:
    """Names of the migrations the root has had (none for a root from before migrations)."""
    if store.remote:
        text = store.remote.read_text(STATE_FILE)
    else:
        path = store.state_dir / STATE_FILE
        text = path.read_text(encoding="utf-8") if path.exists() else None
    return [] if text is None else list(json.loads(text)["migrations"])


def migrate(store: Store) -> list[str]:
    """Apply the migrations the root lacks; returns their names (empty when up to date)."""
    known = [name for name, _ in MIGRATIONS]
    done = applied(store)
    if done == known:
        return []
    ensure_dir(store.state_dir)  # a remote root's lock is local: one machine migrates at once
    fd = os.open(store.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        done = applied(store)  # another process may have migrated while we waited
        unknown = [name for name in done if name not in known]
        if unknown:
            raise NewerRootError(
                f"{store.root} was written by a newer docroute (migrations {unknown}); "
                "upgrade docroute to read it"
            )
        if not done and not store.part_files():
            _save(store, known)  # a new root starts at the current layout
            return []
        ran = []
        for name, step in MIGRATIONS:
            if name in done:
                continue
            step(store)
            done.append(name)
            _save(store, done)
            ran.append(name)
            log.info("output root %s: applied migration %s", store.root, name)
        return ran
    finally:
        os.close(fd)


def _save(store: Store, names: list[str]) -> None:
    text = json.dumps({"migrations": names}, indent=2) + "\n"
    if store.remote:
        store.remote.write_text(STATE_FILE, text)  # one PUT: whole or absent
        return
    path = store.state_dir / STATE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    fsync_dir(store.state_dir)
