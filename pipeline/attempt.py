"""One attempt at one endpoint, owned from its budget claim to its ledger row.

    attempt = Attempt(budget, reserve_usd, document=doc_id, price=..., row=..., record=...,
                      journal=journal.append)
    async with attempt:                      # claim the hold, journal the call as in flight
        reply = await provider.complete(request)
        attempt.answered(reply)              # what the provider says the call cost
        output = validate_reply(reply, schema)
    attempt.entry                            # the one completed ledger row

``async with`` raises :class:`BudgetShortfall` when the budget cannot cover the worst case
(no call, no row: the dispatcher records the refusal). Once the hold is claimed, every exit
of the block ends in one ``finally``: the hold is settled exactly once, at the cost the
attempt is booked at, and exactly one completed ledger row is made. How each exit is booked:

=================================================  ==================  =====================
exit                                               ledger outcome      cost
=================================================  ==================  =====================
an answer, valid                                   ``ok``              the reported usage
a ``ProviderError`` that says what it cost         its outcome         the reported usage
  (invalid or cut-off answers, 4xx/5xx bodies)
the request left but nothing says what it cost     ``uncertain``       the reserved worst case
  (timeout, connection cut, unreadable 200)
cancelled with the call in flight (Ctrl-C, a       ``interrupted``     the reserved worst case
  sibling failed)
any other exception (a bug)                        ``internal_error``  the reserved worst case,
                                                                       or the reply's usage
the journal refused the in-flight line             ``internal_error``  0: no request left
=================================================  ==================  =====================

Worst-case bookings are what a killed call is booked at too: the provider may have billed
the call, so the budget counts the most it can have cost, never $0. The exception itself is
never swallowed; the dispatcher decides what the chunk does next.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from pipeline import errors
from pipeline.models import LedgerEntry, Outcome, Usage
from pipeline.policy import BudgetGuard, Endpoint, Hold, Shortfall
from pipeline.providers import ProviderReply
from pipeline.secrets import scrub


@dataclass(frozen=True, slots=True)
class Booking:
    """What one attempt's ledger row says: outcome, usage, cost and the reply's ids."""

    outcome: Outcome
    usage: Usage
    cost_usd: float
    http_status: int | None
    error: str | None
    request_id: str | None = None
    model_reported: str | None = None
    cause: Outcome | None = None
    """What went wrong, when ``outcome`` says only how it was booked (``uncertain``)."""


class RowMaker(Protocol):
    """Turns a booking into the attempt's ledger row (the dispatcher knows chunk and endpoint)."""

    def __call__(
        self,
        booking: Booking,
        *,
        started: float,
        latency_ms: float,
        reserved: float,
        attempt_id: str,
    ) -> LedgerEntry: ...


class BudgetShortfall(Exception):
    """The budget cannot cover this attempt's worst case: no call is made."""

    def __init__(self, shortfall: Shortfall, amount_usd: float) -> None:
        super().__init__(f"{shortfall.scope} budget short by {amount_usd:.6f} USD")
        self.shortfall = shortfall
        self.amount_usd = amount_usd


class Attempt:
    """A reserved, journaled, ledgered call (see the module docstring for every exit)."""

    def __init__(
        self,
        budget: BudgetGuard,
        reserve_usd: float,
        *,
        document: str | None,
        price: Callable[[Usage], float],
        row: RowMaker,
        record: Callable[[LedgerEntry], None],
        journal: Callable[[LedgerEntry], None] | None = None,
    ) -> None:
        """``row`` makes the ledger rows, ``record`` keeps the completed one (in memory),
        ``journal`` writes rows to disk (the in-flight one, then the completed one)."""
        self.reserve_usd = reserve_usd
        self.attempt_id = uuid.uuid4().hex
        self.entry: LedgerEntry | None = None
        self._budget = budget
        self._document = document
        self._price = price
        self._row = row
        self._record = record
        self._journal = journal
        self._hold: Hold | None = None
        self._booking_made: Booking | None = None
        self._reply: ProviderReply | None = None
        self._started = 0.0

    async def __aenter__(self) -> Attempt:
        found = await self._budget.claim(self.reserve_usd, self._document)
        if isinstance(found, Shortfall):
            raise BudgetShortfall(found, self.reserve_usd)
        self._hold = found
        self._started = time.time()
        if self._journal is None:
            return self
        try:  # on disk before the call: a kill from now on still leaves its cost
            self._journal(self._make(self._in_flight()))
        except Exception as exc:
            # No request has left: nothing was spent. The hold goes back, the row says why,
            # and the batch stops, since later calls could not be journaled either.
            why = f"the journal refused the attempt before the call: {exc!r}"
            self._close(Booking("internal_error", Usage(), 0.0, None, scrub(why)), journal=False)
            raise errors.LedgerWriteError(why) from exc
        return self

    @property
    def reason(self) -> Outcome | None:
        """What the chunk's result says if this was its last attempt (None: still open)."""
        booking = self._booking_made
        return None if booking is None else booking.cause or booking.outcome

    def answered(self, reply: ProviderReply) -> None:
        """The provider answered: its usage is what this attempt costs from now on."""
        self._reply = reply

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(self._booking(exc), journal=True)

    def _booking(self, exc: BaseException | None) -> Booking:
        reply = self._reply
        if exc is None:
            if reply is None:
                raise RuntimeError("an attempt ended without an answer or an error")
            return Booking(
                "ok",
                reply.usage,
                self._price(reply.usage),
                200,
                None,
                reply.request_id,
                reply.model_reported,
            )
        if isinstance(exc, errors.ProviderError):
            message = scrub(exc.message)
            # An answer that failed validation still says which model wrote it.
            model = reply.model_reported if reply is not None else None
            if exc.billing_unknown:
                note = f"{exc.outcome}: {message} (booked at the reserved worst case: the "
                note += "provider may have billed the call without saying so)"
                return Booking(
                    "uncertain",
                    exc.usage,
                    self.reserve_usd,
                    exc.http_status,
                    note,
                    exc.request_id,
                    model,
                    cause=exc.outcome,
                )
            cost = self._price(exc.usage)
            return Booking(
                exc.outcome, exc.usage, cost, exc.http_status, message, exc.request_id, model
            )
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            return Booking("interrupted", Usage(), self.reserve_usd, None, _INTERRUPTED)
        usage = reply.usage if reply is not None else Usage()
        cost = self._price(usage) if reply is not None else self.reserve_usd
        why = scrub(f"internal error: {exc!r}")
        return Booking("internal_error", usage, cost, 200 if reply else None, why)

    def _close(self, booking: Booking, *, journal: bool) -> None:
        """Settle the hold and make the one completed row, whatever else fails."""
        hold, self._hold = self._hold, None
        self._booking_made = booking
        try:
            if hold is not None:
                self._budget.settle(hold, booking.cost_usd)
        finally:
            latency = (time.time() - self._started) * 1000 if self._started else 0.0
            self.entry = self._make(booking, latency_ms=latency)
            self._record(self.entry)
            if journal and self._journal is not None:
                try:
                    self._journal(self.entry)
                except Exception as exc:  # the row is in memory; the batch must stop
                    raise errors.LedgerWriteError(
                        f"the journal refused attempt {self.attempt_id}: {exc!r}"
                    ) from exc

    def _in_flight(self) -> Booking:
        """The row journaled before the call: if the process dies, this is what stays."""
        return Booking("interrupted", Usage(), self.reserve_usd, None, _KILLED)

    def _make(self, booking: Booking, *, latency_ms: float = 0.0) -> LedgerEntry:
        return self._row(
            booking,
            started=self._started,
            latency_ms=latency_ms,
            reserved=self.reserve_usd,
            attempt_id=self.attempt_id,
        )


_INTERRUPTED = (
    "the call was in flight when the run was stopped; its cost is the reserved worst case, "
    "since the provider may have billed it"
)
_KILLED = (
    "the process stopped while this call was in flight; its cost is the reserved worst case, "
    "since the provider may have billed it"
)


def ledger_row(
    run_id: str,
    chunk_id: str,
    number: int,
    endpoint: Endpoint | None,
    booking: Booking,
    *,
    started: float,
    latency_ms: float = 0.0,
    reserved: float = 0.0,
    attempt_id: str | None = None,
    batch_id: str | None = None,
) -> LedgerEntry:
    """The ledger row of attempt ``number`` of a chunk at ``endpoint``; without an endpoint,
    a decision not to call (attempt 0: no route, no budget, a tripped breaker). With
    ``batch_id`` the attempt was a request of that provider batch job (``mode`` ``batch``)."""
    usage = booking.usage
    return LedgerEntry(
        run_id=run_id,
        chunk_id=chunk_id,
        attempt=number if endpoint is not None else 0,
        provider=endpoint.provider if endpoint is not None else None,
        model=endpoint.model if endpoint is not None else None,
        region=endpoint.region if endpoint is not None else None,
        mode="sync" if batch_id is None else "batch",
        started_at=started,
        latency_ms=latency_ms,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_usd=booking.cost_usd,
        reserved_usd=reserved,
        outcome=booking.outcome,
        http_status=booking.http_status,
        error=booking.error,
        request_id=booking.request_id,
        model_reported=booking.model_reported,
        attempt_id=attempt_id or uuid.uuid4().hex,
        batch_id=batch_id,
    )
