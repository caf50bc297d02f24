"""One chunk's way through the dispatcher: what it tried, the rows it left, its one Result.

    job = ChunkJob(chunk, run_id=run_id, schema_name=schema.name, sink=journal.append)
    job.refuse("no_route", "no allowed endpoint was available: …")   # a zero-cost row
    job.attempts, job.ledger, job.excluded       # calls made, their rows, what was left out
    result = job.finish()                        # succeeded (perhaps low_confidence),
                                                 # skipped or failed, with the reason

The dispatcher (:mod:`pipeline.dispatch`) decides where the chunk goes next and fills in
the job as it goes; each call's row comes from :class:`pipeline.attempt.Attempt`, each
decision not to call (no route, no budget, a tripped breaker) from ``refuse``. Nothing
here decides routing: ``finish`` only reads what the job holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline import errors
from pipeline.attempt import Booking, ledger_row
from pipeline.models import Chunk, LedgerEntry, Outcome, Result, Usage
from pipeline.policy import Endpoint, Exclusion, ExclusionReason

__all__ = ["ChunkJob"]


@dataclass(slots=True)
class ChunkJob:
    """One chunk's way through the candidates."""

    chunk: Chunk
    run_id: str
    schema_name: str
    sink: Callable[[LedgerEntry], None] | None = None  # sees each entry as it is made
    attempts: int = 0
    ledger: list[LedgerEntry] = field(default_factory=list)
    last_outcome: Outcome | None = None
    last_error: str | None = None
    output: str | None = None
    endpoint: Endpoint | None = None
    called: Endpoint | None = None  # where the last call went
    excluded: list[Exclusion] = field(default_factory=list)
    fallback: tuple[str, Endpoint, str] | None = None  # valid but not confident: kept
    shortfall: str | None = None  # why the budget refused the last candidate (downgrade)
    unavailable: dict[str, ExclusionReason] = field(
        default_factory=dict
    )  # endpoint → why it took no call
    avoid: set[str] = field(default_factory=set)  # endpoints tried last (a batch failed there)

    def refuse(self, outcome: Outcome, why: str) -> None:
        """A decision not to call (no route, no budget): a zero-cost ledger row says why."""
        self.last_outcome, self.last_error = outcome, why
        booking = Booking(outcome, Usage(), 0.0, None, why)
        entry = ledger_row(self.run_id, self.chunk.chunk_id, 0, None, booking, started=time.time())
        self.ledger.append(entry)
        if self.sink is not None:
            try:
                self.sink(entry)
            except Exception as exc:
                raise errors.LedgerWriteError(f"the journal refused a row: {exc!r}") from exc

    def finish(self) -> Result:
        """The chunk's one result, from what the job holds once routing is over."""
        if self.output is not None:
            return self.result("succeeded", None)
        if self.fallback is not None:
            self.output, self.endpoint, doubt = self.fallback
            note = (
                f"kept the answer of {self.endpoint.key}, the dearest tier that answered: {doubt}"
            )
            return self.result("succeeded", "low_confidence", note)
        if self.last_outcome == "budget_exhausted" and self.attempts == 0:
            return self.result("skipped", "budget_exhausted")
        return self.result("failed", self.last_outcome or "attempts_exhausted")

    def result(self, status: str, reason: str | None, note: str | None = None) -> Result:
        """A ``Result`` with ``status`` and ``reason``; ``note`` is its error if it succeeded."""
        ep = self.endpoint
        return Result(
            run_id=self.run_id,
            chunk_id=self.chunk.chunk_id,
            doc_id=self.chunk.doc_id,
            path=self.chunk.path,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            output=self.output,
            provider=ep.provider if ep else None,
            model=ep.model if ep else None,
            region=ep.region if ep else None,
            attempts=self.attempts,
            cost_usd=sum(e.cost_usd for e in self.ledger),
            finished_at=time.time(),
            schema_name=self.schema_name,
            error=self.last_error if self.output is None else note,
            excluded=_excluded_json(self.excluded),
        )


def _excluded_json(excluded: list[Exclusion]) -> str | None:
    """``Result.excluded``: each (endpoint, reason) once, in the order decided; None if none."""
    seen = dict.fromkeys((x.endpoint, x.reason) for x in excluded)
    if not seen:
        return None
    return json.dumps([{"endpoint": e, "reason": r} for e, r in seen])
