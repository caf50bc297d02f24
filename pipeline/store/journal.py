"""The ledger journal: every attempt's cost on disk the moment the call completes.

    with Journal.open(store.root, run_id, batch_id) as journal:
        journal.append(entry)            # one JSON line, written with one write(2)
        ...
        store.write_rows("ledger", run_id, entries)   # the batch's ledger part
        journal.commit()                 # the part holds them all: the journal goes

Ledger parts are written once per batch; a process killed mid-batch would lose the cost
of every call that had completed. The journal closes that gap: each entry is appended to
``<root>/_journal/<run_id>/<batch>.jsonl`` with a single ``write`` on an ``O_APPEND``
descriptor, so it is in the kernel (and survives ``kill -9``) before the next call.
The file is flushed to disk (``fsync``) at commit.

``recover(store)`` turns journals left by dead processes into ledger parts, skipping
entries already in a part (a crash between writing the part and removing the journal),
by their ``attempt_id``. A live writer holds an exclusive ``flock`` on its journal, so
recovery never touches a journal that is still being written.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from pipeline.models import LedgerEntry

if TYPE_CHECKING:
    from pipeline.store.store import Store

log = logging.getLogger(__name__)

JOURNAL_DIR = "_journal"


class Journal:
    """An append-only, per-batch log of ledger entries (one writer, holding a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._closed = False

    @classmethod
    def open(cls, root: Path, run_id: str, batch_id: str) -> Journal:
        name = batch_id.replace("/", "_") + ".jsonl"
        return cls(root / JOURNAL_DIR / run_id / name)

    def append(self, entry: LedgerEntry) -> None:
        line = json.dumps(dataclasses.asdict(entry), separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())

    def commit(self) -> None:
        """The batch's ledger part is written: the journal is no longer needed."""
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        """Stop writing; an uncommitted journal stays for ``recover``."""
        if not self._closed:
            os.fsync(self._fd)
            os.close(self._fd)  # releases the lock
            self._closed = True

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_entries(path: Path) -> list[LedgerEntry]:
    """The complete entries of a journal (a torn last line, from a crash mid-write, is dropped)."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(LedgerEntry(**json.loads(line)))
        except (ValueError, TypeError):
            log.warning("skipping a torn line in %s", path)
    return entries


def recover(store: Store) -> int:
    """Turn the journals of dead writers into ledger parts; returns the entries recovered."""
    recovered = 0
    for path in sorted((store.root / JOURNAL_DIR).glob("*/*.jsonl")):
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer: not ours to touch
            recovered += _compact(store, path)
        finally:
            os.close(fd)
    return recovered


def _compact(store: Store, path: Path) -> int:
    run_id = path.parent.name
    entries = read_entries(path)
    if entries:
        known = {
            row[0]
            for row in store.read(
                "SELECT attempt_id FROM ledger WHERE run_id = ? AND attempt_id IS NOT NULL",
                [run_id],
            ).rows
        }
        entries = [e for e in entries if e.attempt_id not in known]
        store.write_rows("ledger", run_id, entries)
    path.unlink()
    if entries:
        log.warning("recovered %d ledger entries of run %s from %s", len(entries), run_id, path)
    return len(entries)
