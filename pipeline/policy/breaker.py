"""A per-document breaker: a document whose chunks keep failing the same way stops early.

    breaker = DocumentBreaker(limit=5)
    why = breaker.tripped(chunk.doc_id)      # None, or why the rest of it is not sent
    ...
    breaker.observe(result)                  # after each chunk's terminal result

Some failures repeat for every chunk of one document: answers cut off at the output cap
(a 20 MB single-line file), answers that never validate, chunks the model refuses as bad
requests. Each such chunk is billed before it fails, so one bad document could eat a run's
budget. After ``limit`` chunks of a document failed with the same reason, its remaining
chunks are skipped without a call (``docroute rerun`` can still take them, after a fix).
Failures that say nothing about the document (no route, no budget, rate limits) never count.
"""

from __future__ import annotations

from collections import Counter

from pipeline.models import Result

#: Reasons that, repeated within one document, predict the next chunk fails the same way.
REPEATING = frozenset(
    {"output_truncated", "invalid_output", "context_exceeded", "bad_request", "internal_error"}
)


class DocumentBreaker:
    """Counts failed chunks per (document, reason); trips a document at ``limit`` (0: never)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._failures: Counter[tuple[str, str]] = Counter()
        self._tripped: dict[str, str] = {}

    def tripped(self, doc_id: str) -> str | None:
        """Why ``doc_id``'s remaining chunks are not sent, or None while it may go on."""
        return self._tripped.get(doc_id)

    def observe(self, result: Result) -> None:
        if not self.limit or result.status != "failed" or result.reason not in REPEATING:
            return
        key = (result.doc_id, result.reason)
        self._failures[key] += 1
        if self._failures[key] >= self.limit and result.doc_id not in self._tripped:
            self._tripped[result.doc_id] = (
                f"{self._failures[key]} chunks of {result.path} failed with {result.reason}; "
                "its remaining chunks were not sent (routing.document_failures_max "
                f"= {self.limit}). Fix the cause, then `docroute rerun` them"
            )
