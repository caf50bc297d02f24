"""The contract of a provider's batch API: submit many requests as one job, read them back.

    job_id = await provider.submit(lines, metadata={"docroute_intent": intent})
    state = await provider.poll(job_id)          # JobState: pending | running | ended
    state = await provider.cancel(job_id)        # what was done stays done
    for line in await provider.results(job_id):  # once ``state.ended``
        line.custom_id, line.reply, line.error, line.unfinished
    job_id = await provider.find(metadata)       # a job submitted before a crash, or None

A job's requests are ``BatchLine``s: a ``ChatRequest`` and its ``custom_id`` (docroute's
attempt id, so each answer is matched to its attempt and ledgered once). An adapter that
offers batches has ``batch_limits`` (the vendor's requests and bytes per job, its window)
and the five methods; ``supports_batch`` tells whether a provider does. Every answer a job
returns is a ``LineResult``: the reply (usage and text, as ``complete`` returns them, billed
at the batch price), or the error the line ended with, or ``unfinished``: the job was
cancelled or expired before the line ran (not billed). A line the result files do not
mention is unfinished too. Errors of the job itself (upload refused, unknown job, the
vendor down) are raised as ``pipeline.errors.ProviderError``, as for ``complete``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from pipeline import errors
from pipeline.providers.base import ChatRequest, ProviderReply

JobPhase = Literal["pending", "running", "ended"]


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one job of a vendor's batch API may hold, and how long it may take."""

    max_requests: int
    max_bytes: int
    window_s: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a job; ``custom_id`` is the attempt id it is ledgered under."""

    custom_id: str
    request: ChatRequest


@dataclass(frozen=True, slots=True)
class JobState:
    """A job as its vendor reports it, with the phase docroute acts on."""

    job_id: str
    phase: JobPhase
    status: str
    """The vendor's own word (``in_progress``, ``canceling``, ``TIMEOUT_EXCEEDED``, …)."""
    total: int = 0
    done: int = 0
    """Requests the vendor has finished, answered or failed."""
    failed: int = 0
    error: str | None = None
    """Why the job failed as a whole (its input refused: nothing ran, nothing billed)."""

    @property
    def ended(self) -> bool:
        return self.phase == "ended"


@dataclass(frozen=True, slots=True)
class LineResult:
    """How one request of a job ended."""

    custom_id: str
    reply: ProviderReply | None = None
    error: errors.ProviderError | None = None
    unfinished: bool = False
    """Not run: the job was cancelled or expired first. Nothing was billed for it."""


@runtime_checkable
class BatchProvider(Protocol):
    batch_limits: BatchLimits

    def line_bytes(self, line: BatchLine) -> int:
        """The bytes ``line`` takes in the job's request body or file (for splitting)."""
        ...

    async def submit(self, lines: Sequence[BatchLine], *, metadata: dict[str, str]) -> str: ...

    async def poll(self, job_id: str) -> JobState: ...

    async def cancel(self, job_id: str) -> JobState: ...

    async def results(self, job_id: str) -> list[LineResult]: ...

    async def find(self, metadata: dict[str, str]) -> str | None:
        """The job created with ``metadata`` (by ``submit``), if the vendor has one."""
        ...


def supports_batch(provider: object) -> bool:
    """Whether ``provider``'s adapter (and, for presets, its service) offers batches."""
    return isinstance(provider, BatchProvider) and getattr(provider, "batch_enabled", True)


def split(
    lines: Sequence[BatchLine], limits: BatchLimits, size_of: Callable[[BatchLine], int]
) -> list[list[BatchLine]]:
    """``lines`` in jobs that each fit ``limits`` (requests and bytes), in order."""
    jobs: list[list[BatchLine]] = []
    current: list[BatchLine] = []
    used = 0
    for line in lines:
        size = size_of(line)
        if size > limits.max_bytes:
            raise ValueError(
                f"request {line.custom_id} takes {size} bytes, more than a whole batch job "
                f"may ({limits.max_bytes})"
            )
        if current and (len(current) >= limits.max_requests or used + size > limits.max_bytes):
            jobs.append(current)
            current, used = [], 0
        current.append(line)
        used += size
    if current:
        jobs.append(current)
    return jobs


__all__ = [
    "BatchLimits",
    "BatchLine",
    "BatchProvider",
    "JobPhase",
    "JobState",
    "LineResult",
    "split",
    "supports_batch",
]
