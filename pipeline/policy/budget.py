"""Hard USD caps that hold with any number of calls in flight: per run, optionally per document.

    guard = BudgetGuard(cap_usd=5.0, document_cap_usd=0.5)
    hold = await guard.reserve(0.012, document="doc-1")  # worst case; None: cannot be afforded
    ...                                                  # make the call
    guard.settle(hold, actual_usd=0.004)                 # what the ledger says it cost

Before each call the worst case (every prompt token plus the maximum output at the
model's price) is reserved; after it the reservation is replaced by the actual cost.
``spent + reserved`` never exceeds a cap, so no interleaving of calls can overshoot it.
With a per-document cap a reservation is taken from the document's account and the run's
at once, under one lock, or from neither. When a reservation does not fit but calls that
hold the missing room are still in flight, ``reserve`` waits for them to settle (they
usually cost far less than reserved) and only gives up when settling could not help.
``claim`` is ``reserve`` that says which cap refused (a ``Shortfall``).

The guard is safe to share across threads and event loops: a lock guards the sums, and a
caller that has to wait parks on a future of its own loop that the next ``settle`` wakes
(through ``call_soon_threadsafe``), so waiting costs nothing until room may have appeared.
A hold that is never settled would keep its waiters parked: every exit of an attempt
settles its hold (``pipeline.attempt``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

#: The rolling window of ``budget.monthly_usd``: 30 days.
MONTH_WINDOW_S = 30 * 86_400.0


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation; settle it exactly once."""

    amount_usd: float
    document: str | None = None
    """The document account it was also taken from (None: the run's only)."""


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a reservation was refused: the cap that cannot cover it and what is left of it."""

    scope: Literal["run", "document"]
    remaining_usd: float

    def describe(self, amount_usd: float, what: str) -> str:
        return (
            f"the {self.scope} budget cannot cover {amount_usd:.6f} USD for {what} "
            f"({max(self.remaining_usd, 0.0):.6f} USD left)"
        )


@dataclass(slots=True)
class _Account:
    """One cap's sums. ``reserved`` is held by ``in_flight`` calls."""

    cap: float
    spent: float = 0.0
    reserved: float = 0.0
    in_flight: int = 0

    def fits(self, amount: float) -> bool:
        return self.spent + self.reserved + amount <= self.cap

    def hopeless(self, amount: float) -> bool:
        """True if settling every call in flight could not make ``amount`` fit."""
        return self.in_flight == 0 or self.spent + amount > self.cap

    def take(self, amount: float) -> None:
        self.reserved += amount
        self.in_flight += 1

    def settle(self, amount: float, actual: float) -> None:
        self.reserved = max(self.reserved - amount, 0.0)
        self.in_flight -= 1
        self.spent += actual


class BudgetGuard:
    """The run's cap (``cap_usd``, of which ``spent_usd`` is already used) and, when
    ``document_cap_usd`` is set, the same cap for each document's chunks
    (``document_spent_usd``: what each document already spent, for a resumed run)."""

    def __init__(
        self,
        cap_usd: float,
        spent_usd: float = 0.0,
        *,
        document_cap_usd: float | None = None,
        document_spent_usd: Mapping[str, float] | None = None,
    ) -> None:
        if cap_usd < 0:
            raise ValueError(f"budget cap must not be negative, got {cap_usd}")
        if document_cap_usd is not None and document_cap_usd <= 0:
            raise ValueError(f"document budget cap must be positive, got {document_cap_usd}")
        self.cap_usd = cap_usd
        self.document_cap_usd = document_cap_usd
        self._run = _Account(cap_usd, spent_usd)
        self._documents: dict[str, _Account] = {}
        self._spent_before = dict(document_spent_usd or {})
        self._lock = threading.Lock()
        #: Callers waiting for room, each woken on its own loop by the next ``settle``.
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def spent_usd(self) -> float:
        return self._run.spent

    @property
    def reserved_usd(self) -> float:
        return self._run.reserved

    def document_spent_usd(self, document: str) -> float:
        """What ``document``'s chunks spent so far in this run (0 without a document cap)."""
        account = self._documents.get(document)
        return account.spent if account is not None else 0.0

    def try_reserve(self, amount_usd: float, document: str | None = None) -> Hold | None:
        """Reserve now if it fits every cap that applies, without waiting."""
        with self._lock:
            found = self._try(amount_usd, document)
        return found if isinstance(found, Hold) else None

    async def reserve(self, amount_usd: float, document: str | None = None) -> Hold | None:
        """Reserve ``amount_usd``, waiting for in-flight calls to settle if that could help."""
        found = await self.claim(amount_usd, document)
        return found if isinstance(found, Hold) else None

    async def claim(self, amount_usd: float, document: str | None = None) -> Hold | Shortfall:
        """``reserve``, but a refusal says which cap could not cover the amount."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                found = self._try(amount_usd, document)
                if found is not None:
                    return found
                # Parked under the lock that ``settle`` takes: no wake-up can be missed.
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, waiter))
            try:
                await waiter
            finally:
                if waiter.cancelled() or not waiter.done():  # cancelled while parked
                    with self._lock:
                        self._waiters = [(lo, w) for lo, w in self._waiters if w is not waiter]

    def hold_spent(self, amount_usd: float, document: str | None = None) -> Hold:
        """A hold for money already committed at a provider (the requests of a batch job a
        resumed run found outstanding), taken even past the cap: it is spent whatever the
        cap says, so nothing else may use that room. Settle it like any other."""
        with self._lock:
            doc = self._account_of(document)
            self._run.take(amount_usd)
            if doc is not None:
                doc.take(amount_usd)
            return Hold(amount_usd, document if doc is not None else None)

    def settle(self, hold: Hold, actual_usd: float) -> None:
        """Replace a reservation by what the call actually cost."""
        with self._lock:
            self._run.settle(hold.amount_usd, actual_usd)
            if hold.document is not None:
                self._documents[hold.document].settle(hold.amount_usd, actual_usd)
            waiters, self._waiters = self._waiters, []
        if waiters:
            _wake_all(waiters)
        if actual_usd > hold.amount_usd + 1e-12:
            log.warning(
                "a call cost %.6f USD, more than the %.6f USD reserved for it; the provider "
                "counted more tokens than the reservation bound",
                actual_usd,
                hold.amount_usd,
            )

    def _try(self, amount: float, document: str | None) -> Hold | Shortfall | None:
        """A hold, a final refusal, or None: wait, calls in flight may free the room.
        The caller holds the lock."""
        doc = self._account_of(document)
        run_fits = self._run.fits(amount)
        doc_fits = doc is None or doc.fits(amount)
        if run_fits and doc_fits:
            self._run.take(amount)
            if doc is not None:
                doc.take(amount)
            return Hold(amount, document if doc is not None else None)
        if not run_fits and self._run.hopeless(amount):
            return Shortfall("run", self._run.cap - self._run.spent - self._run.reserved)
        if doc is not None and not doc_fits and doc.hopeless(amount):
            return Shortfall("document", doc.cap - doc.spent - doc.reserved)
        return None

    def _account_of(self, document: str | None) -> _Account | None:
        if document is None or self.document_cap_usd is None:
            return None
        account = self._documents.get(document)
        if account is None:
            account = self._documents[document] = _Account(
                self.document_cap_usd, self._spent_before.pop(document, 0.0)
            )
        return account


def _wake_all(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    """Wake each waiter on its own loop; each then retries its reservation."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    for loop, waiter in waiters:
        if loop is here:
            loop.call_soon(_wake, waiter)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
