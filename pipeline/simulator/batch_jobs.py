"""OpenAI batch jobs and files as the simulator keeps them, and a job's life on its clock.

A job "takes" its endpoint's ``batch_turnaround_s`` (T): validating for T/10, answering its
n lines one after another for 8T/10 (line i is done at ``in_progress_at + 0.8·T·(i+1)/n``),
finalizing for T/10; nothing runs in the background, the status is read off the clock:

    >>> job = BatchJob("batch_1", "eu", "file-1", None, "m", [InputLine("a", b"{}")] * 4,
    ...                [], created=100.0, created_unix=1e9, turnaround_s=10.0)
    >>> [job.status(t) for t in (100.0, 101.0, 109.0, 110.0)]
    ['validating', 'in_progress', 'finalizing', 'completed']
    >>> [job.due(t) for t in (101.0, 103.0, 108.9, 109.0)]
    [0, 1, 3, 4]

A cancel at time K stops answering at K and ends ``cancelled`` T/10 later; with
``batch_expire_after_s`` (E) a job not completed by ``created + E`` is ``expired`` then;
either way the lines done so far are kept. A job whose input file failed validation
(``errors``) is ``failed`` when validating ends. Jobs and files are touched only from the
server's event loop, so the store takes no lock.
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
    "cancelled",
]  # fmt: skip
#: Statuses after which a job changes no more; the last three have output / error files.
TERMINAL: frozenset[Status] = frozenset(("failed", "completed", "expired", "cancelled"))
CHAT_COMPLETIONS = "/v1/chat/completions"
_WINDOW_S = 24 * 3600  # the only completion window, and how long the API says a job may take
_FILE_TTL_S = 30 * 24 * 3600  # batch input and output files expire after 30 days
_STATUS_OF: dict[str, Status] = {
    "in_progress_at": "in_progress",
    "finalizing_at": "finalizing",
    "completed_at": "completed",
    "failed_at": "failed",
    "expired_at": "expired",
    "cancelling_at": "cancelling",
    "cancelled_at": "cancelled",
}


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An uploaded (``batch``) or produced (``batch_output``) file of one endpoint."""

    id: str
    endpoint: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's ``FileObject``."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": self.created_at + _FILE_TTL_S if "batch" in self.purpose else None,
        }


@dataclass(frozen=True, slots=True)
class InputLine:
    """One request of a job: its ``custom_id`` and the chat body, as its route would get it."""

    custom_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class LineResult:
    """One answered line: its output- or error-file line, and the tokens of a 200."""

    line: dict[str, Any]
    ok: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class BatchJob:
    """One batch job; times ``created`` and after are on the state's clock."""

    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    model: str | None
    lines: list[InputLine]
    errors: list[dict[str, Any]]  # OpenAI ``BatchError``s of the input file; any → failed
    created: float
    created_unix: float
    turnaround_s: float
    expire_after_s: float | None = None
    cancel_at: float | None = None
    results: list[LineResult] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    finished: bool = False  # the output and error files are written

    def events(self, now: float) -> dict[str, float]:
        """The ``*_at`` events that happened by ``now``, on the clock."""
        t = self.turnaround_s
        started = self.created + t / 10
        if self.errors:
            return {"failed_at": started} if now >= started else {}
        stop = self._stop()
        planned = {
            "in_progress_at": started,
            "finalizing_at": self.created + 9 * t / 10,
            "completed_at": self.created + t,
        }
        happened = {k: v for k, v in planned.items() if stop is None or v < stop[1]}
        if self.cancel_at is not None:
            happened |= {"cancelling_at": self.cancel_at, "cancelled_at": self.cancel_at + t / 10}
        elif stop is not None:
            happened[stop[0]] = stop[1]
        return {k: v for k, v in happened.items() if v <= now}

    def status(self, now: float) -> Status:
        events = self.events(now)
        return _STATUS_OF[max(events, key=events.__getitem__)] if events else "validating"

    def due(self, now: float) -> int:
        """How many lines are done by ``now`` (answering stops at a cancel or the expiry)."""
        if self.errors or not self.lines:
            return 0
        stop = self._stop()
        horizon = min(now, stop[1]) if stop is not None else now
        span, n = 0.8 * self.turnaround_s, len(self.lines)
        done = math.floor((horizon - self.created - self.turnaround_s / 10) * n / span + 1e-9)
        return min(max(done, 0), n)

    def unix(self, at: float) -> int:
        """A clock time as the API's Unix seconds."""
        return int(self.created_unix + (at - self.created))

    def to_dict(self, now: float) -> dict[str, Any]:
        """OpenAI's ``Batch`` as of ``now``."""
        events = {k: self.unix(v) for k, v in self.events(now).items()}
        expires = self.expire_after_s if self.expire_after_s is not None else _WINDOW_S
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": CHAT_COMPLETIONS,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status(now),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.unix(self.created),
            "expires_at": self.unix(self.created + expires),
            **{k: events.get(k) for k in _STATUS_OF},
            "request_counts": self.request_counts(now),
            "metadata": self.metadata,
            "usage": self.usage(),
        }

    def request_counts(self, now: float) -> dict[str, int]:
        """``total`` once validated; lines not done when it stopped count as ``failed``."""
        if self.errors or "in_progress_at" not in self.events(now):
            return {"total": 0, "completed": 0, "failed": 0}
        completed = sum(r.ok for r in self.results)
        failed = (len(self.lines) if self.finished else len(self.results)) - completed
        return {"total": len(self.lines), "completed": completed, "failed": failed}

    def usage(self) -> dict[str, Any]:
        """``BatchUsage``: the tokens of the lines answered 200 so far."""
        prompt = sum(r.prompt_tokens for r in self.results)
        completion = sum(r.completion_tokens for r in self.results)
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }

    def _stop(self) -> tuple[str, float] | None:
        """The event that stops answering before completion (a cancel, the expiry), if any."""
        if self.cancel_at is not None:
            return "cancelling_at", self.cancel_at
        if self.expire_after_s is not None and self.expire_after_s < self.turnaround_s:
            return "expired_at", self.created + self.expire_after_s
        return None


class BatchStore:
    """Every endpoint's files and batch jobs; each id is found only under its endpoint."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._jobs: dict[str, BatchJob] = {}

    def add_file(
        self,
        endpoint: str,
        filename: str,
        purpose: str,
        content: bytes,
        at: int,
        file_id: str | None = None,
    ) -> StoredFile:
        """Keep a file; its id is ``file_id`` (a vendor's own form of id) or a new ``file-…``."""
        file_id = file_id or new_id("file-", 24)
        stored = StoredFile(file_id, endpoint, filename, purpose, content, at)
        self._files[stored.id] = stored
        return stored

    def file(self, endpoint: str, file_id: str) -> StoredFile | None:
        found = self._files.get(file_id)
        return found if found is not None and found.endpoint == endpoint else None

    def delete_file(self, endpoint: str, file_id: str) -> bool:
        found = self.file(endpoint, file_id) is not None
        if found:
            del self._files[file_id]
        return found

    def add_job(self, job: BatchJob) -> None:
        self._jobs[job.id] = job

    def job(self, endpoint: str, batch_id: str) -> BatchJob | None:
        found = self._jobs.get(batch_id)
        return found if found is not None and found.endpoint == endpoint else None

    def jobs(self, endpoint: str) -> list[BatchJob]:
        """The endpoint's jobs, newest first (as the API lists them)."""
        return [job for job in reversed(self._jobs.values()) if job.endpoint == endpoint]

    def delete_job(self, endpoint: str, batch_id: str) -> bool:
        """Forget the endpoint's job ``batch_id``; False if it has none by that id."""
        found = self.job(endpoint, batch_id) is not None
        if found:
            del self._jobs[batch_id]
        return found


def store_of(state: object) -> BatchStore:
    """The one store of ``state``'s simulator, shared by every vendor's batch routes (a file
    uploaded through the files routes is read by another vendor's job routes)."""
    return _STORES.setdefault(state, BatchStore())


_STORES: weakref.WeakKeyDictionary[object, BatchStore] = weakref.WeakKeyDictionary()


def new_id(prefix: str, length: int) -> str:
    """``prefix`` and ``length`` random hex digits: ids unique across servers and runs."""
    return prefix + os.urandom(length // 2 + 1).hex()[:length]
