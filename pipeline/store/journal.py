"""The journal: every attempt's cost, and every chunk's result, on disk the moment it exists.

    with Journal.open(store.root, run_id, batch_id) as journal:
        journal.append(entry)            # one JSON line, written with one write(2)
        journal.append_result(result)    # the chunk's terminal result, the same way
        ...
        store.write_rows("ledger", run_id, entries)   # the batch's parts
        store.write_results(run_id, results)
        journal.commit()                 # the parts hold them all: the journal goes

Ledger parts are written once per batch; a process killed mid-batch would lose the cost
of every call that had completed. The journal closes that gap: each entry is appended to
``<root>/_journal/<run_id>/<batch>.jsonl`` with a single ``write`` on an ``O_APPEND``
descriptor, so it is in the kernel (and survives ``kill -9``) before the next call.
The file is flushed to disk (``fsync``) at commit.

``recover(store)`` (what commands that write, and ``docroute recover``, call first) turns
journals left by dead processes into ledger and results parts, skipping rows already in a
part (a crash between writing the parts and removing the journal): ledger rows by
``attempt_id``, results by ``chunk_id``. A chunk whose result was journaled is therefore
never asked for again when its run resumes. A live writer
holds an exclusive ``flock`` on its journal, taken before the journal has its name (it is
created under a hidden temporary name, locked, then linked as ``<batch>.jsonl``), so
recovery never touches a journal that is still being written; a journal that vanishes
between recovery's listing and its lock (committed meanwhile) is skipped.

For an object-store root, ``<root>`` here is the local state folder
(``Store.state_dir``): appends and locks need a local filesystem. A journal left by a
machine that died stays on that machine; a run on another machine cannot recover it.

A run in progress also holds ``<root>/_journal/<run_id>/run.lock`` (:class:`RunLock`):
``recover`` marks a run whose record says ``running`` but whose lock nobody holds as
``interrupted``, and ``docroute run --resume`` refuses a run that is still alive. On an
object-store root a run on another machine is alive while its lease in the bucket is
fresh (``lease``): it is not marked ``interrupted`` then. ``unrecovered(store)`` says what
``recover`` would find, without writing (what commands that only read tell their user).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from pipeline.models import LedgerEntry, Result

if TYPE_CHECKING:
    from pipeline.store.store import Store

log = logging.getLogger(__name__)

JOURNAL_DIR = "_journal"
# Flat dataclasses: reading the fields is all ``asdict`` would do, without its deep copy.
_LEDGER_FIELDS = tuple(f.name for f in dataclasses.fields(LedgerEntry))
_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(Result))
#: Journal names tried per batch (``b00001.jsonl``, ``b00001.1.jsonl``, …) when a dead
#: attempt's journal still holds the first: far more than any run resumes.
_MAX_SUFFIX = 100


class Journal:
    """An append-only, per-batch log of ledger entries (one writer, holding a lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd, self.path = _create_locked(path)
        self._closed = False

    @classmethod
    def open(cls, root: Path, run_id: str, batch_id: str) -> Journal:
        name = batch_id.replace("/", "_") + ".jsonl"
        return cls(root / JOURNAL_DIR / run_id / name)

    def append(self, entry: LedgerEntry) -> None:
        """Journal one attempt (a bare JSON object: the ledger row)."""
        self._write({name: getattr(entry, name) for name in _LEDGER_FIELDS})

    def append_result(self, result: Result) -> None:
        """Journal one chunk's terminal result (``{"result": {...}}``)."""
        self._write({"result": {name: getattr(result, name) for name in _RESULT_FIELDS}})

    def _write(self, row: dict[str, object]) -> None:
        if self._closed:  # a straggler after commit would write to a reused descriptor
            raise JournalClosedError(f"journal {self.path} is closed; nothing more is written")
        line = json.dumps(row, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())  # one write(2) on O_APPEND: never interleaved

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


def _create_locked(path: Path) -> tuple[int, Path]:
    """A new journal at ``path`` (or ``<stem>.<n>.jsonl`` if taken), locked before it is visible.

    The file is made under a name ``recover`` does not glob, locked, then linked under its
    final name: a recovery can never lock (and delete) a journal its writer has not locked
    yet. ``link`` never replaces a file, so a journal a dead attempt left is not lost.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for n in range(_MAX_SUFFIX):
            final = path if n == 0 else path.with_name(f"{path.stem}.{n}{path.suffix}")
            try:
                os.link(tmp, final)
                return fd, final
            except FileExistsError:
                continue
        raise FileExistsError(f"no free journal name next to {path} (tried {_MAX_SUFFIX})")
    except BaseException:
        os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def read_entries(path: Path) -> list[LedgerEntry]:
    """The complete ledger entries of a journal (see :func:`read_journal`)."""
    return read_journal(path)[0]


def read_journal(path: Path) -> tuple[list[LedgerEntry], list[Result]]:
    """The complete ledger entries and results of a journal.

    An attempt is journaled twice: as ``interrupted`` when the call starts, and for good
    when it completes; the later line wins, so only calls that were in flight when the
    writer died stay ``interrupted``. A torn last line (a crash mid-write) is dropped
    with a warning.
    """
    entries: list[LedgerEntry] = []
    results: list[Result] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            if "result" in row:
                results.append(Result(**row["result"]))
            else:
                entries.append(LedgerEntry(**row))
        except (ValueError, TypeError):
            log.warning("skipping a torn line in %s", path)
    latest = {e.attempt_id or str(i): e for i, e in enumerate(entries)}  # last line wins
    return list(latest.values()), results


def recover(store: Store) -> int:
    """Turn the journals of dead writers into parts; returns the ledger entries recovered.

    Also marks runs left ``running`` by a dead process as ``interrupted``.
    """
    recovered = sum(_compact(store, path) for path in _unheld(store, fcntl.LOCK_EX))
    _mark_interrupted(store)
    return recovered


def _unheld(store: Store, lock: int) -> Iterator[Path]:
    """Each journal no live writer holds, locked (``lock``) while the caller looks at it."""
    for path in sorted((store.state_dir / JOURNAL_DIR).glob("*/*.jsonl")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # committed (or recovered by another process) since the listing
        try:
            try:
                fcntl.flock(fd, lock | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer: not ours to touch
            if _same_file(fd, path):  # not removed between our open and our lock
                yield path
        finally:
            os.close(fd)


@dataclasses.dataclass(frozen=True, slots=True)
class Unrecovered:
    """What ``recover`` would do on a root, found without writing anything.

    ``journals``: run ids with a journal no live process holds (calls whose cost and
    results are not in the tables yet); ``stopped``: runs recorded ``running`` whose
    process is gone (``recover`` records them ``interrupted``).
    """

    journals: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.journals or self.stopped)

    def notice(self, root: object) -> str:
        """One line for a reader of the root: what is missing and the command that adds it."""
        parts = []
        if self.journals:
            parts.append(
                f"the journal of run {', '.join(self.journals)} is not recovered yet (its last "
                "calls are not in the ledger or results)"
            )
        stopped = [r for r in self.stopped if r not in self.journals]
        if stopped:
            parts.append(f"run {', '.join(stopped)} stopped without finishing")
        return (
            f"{'; '.join(parts)}: `docroute recover --root {root}` records them "
            "(run, resume, rerun and compact do too)"
        )


def unrecovered(store: Store) -> Unrecovered:
    """Journals of dead writers and runs left ``running`` by a dead process; read-only."""
    journals = {path.parent.name for path in _unheld(store, fcntl.LOCK_SH)}
    running = store.read("SELECT run_id FROM runs WHERE status = 'running'").rows
    stopped = tuple(run_id for (run_id,) in running if not _alive(store, run_id))
    return Unrecovered(tuple(sorted(journals)), stopped)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (only a lock holder removes it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _compact(store: Store, path: Path) -> int:
    run_id = path.parent.name
    entries, results = read_journal(path)
    if entries:
        known = _column(store, "ledger", "attempt_id", run_id)
        entries = [e for e in entries if e.attempt_id not in known]
        store.write_rows("ledger", run_id, entries)
    if results:
        done = _column(store, "results", "chunk_id", run_id)
        fresh = {r.chunk_id: r for r in results if r.chunk_id not in done}
        store.write_results(run_id, list(fresh.values()))
        results = list(fresh.values())
    path.unlink(missing_ok=True)
    if entries or results:
        log.warning(
            "recovered %d ledger entries and %d results of run %s from %s",
            len(entries),
            len(results),
            run_id,
            path,
        )
    return len(entries)


def _column(store: Store, table: str, column: str, run_id: str) -> set[str]:
    sql = f"SELECT {column} FROM {table} WHERE run_id = ? AND {column} IS NOT NULL"
    return {row[0] for row in store.read(sql, [run_id]).rows}


class RunLock:
    """Held by the process running ``run_id`` for as long as the run is open.

    ``RunLock.acquire`` raises ``RunBusyError`` when another live process holds it.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def path_of(cls, root: Path, run_id: str) -> Path:
        return root / JOURNAL_DIR / run_id / "run.lock"

    @classmethod
    def acquire(cls, root: Path, run_id: str) -> RunLock:
        path = cls.path_of(root, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunBusyError(
                f"run {run_id} is still running in another process (it holds {path})"
            ) from None
        return cls(fd, path)

    @classmethod
    def held(cls, root: Path, run_id: str) -> bool:
        """Whether a live process holds ``run_id``'s lock right now."""
        path = cls.path_of(root, run_id)
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the lock if we took it
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class JournalClosedError(RuntimeError):
    """A write reached a journal after it was committed or closed (a bug, not data)."""


class RunBusyError(Exception):
    """The run is held by another live process."""


def _mark_interrupted(store: Store) -> None:
    """Runs whose record says ``running`` but whose process is gone become ``interrupted``."""
    from pipeline.store.runs import RunRecord

    stale = store.read("SELECT * FROM runs WHERE status = 'running'").to_dicts()
    for row in stale:
        record = RunRecord.from_row(row)
        if _alive(store, record.run_id):
            continue
        record.status = "interrupted"
        record.updated_at = 0.0
        record.message = (
            "the process running it stopped without finishing (killed, crashed or the machine "
            f"went down); resume it with `docroute run --resume {record.run_id}`"
        )
        store.write_run(record)
        log.warning("run %s was interrupted; it can be resumed", record.run_id)


def _alive(store: Store, run_id: str) -> bool:
    """Whether a process runs ``run_id``: this machine's by its lock; on an object-store
    root, any machine's by its fresh lease in the bucket (``lease``)."""
    if RunLock.held(store.state_dir, run_id):
        return True
    if store.remote is None:
        return False
    from pipeline.store.lease import read_lease

    lease = read_lease(store.remote, run_id)
    return lease is not None and lease.alive(store.state_dir)
