"""A hard USD cap that holds with any number of calls in flight.

    guard = BudgetGuard(cap_usd=5.0)
    hold = await guard.reserve(0.012)      # worst case of the call; None: cannot be afforded
    ...                                     # make the call
    guard.settle(hold, actual_usd=0.004)   # what the ledger says it cost

Before each call the worst case (every prompt token plus the maximum output at the
model's price) is reserved; after it the reservation is replaced by the actual cost.
``spent + reserved`` never exceeds the cap, so no interleaving of calls can overshoot it.
When a reservation does not fit but other calls are still in flight, ``reserve`` waits
for them to settle (they usually cost far less than reserved) and only answers ``None``
when nothing is in flight and it still does not fit.

The guard is safe to share across threads and event loops (a lock guards the sums; a
waiting caller polls, which only happens close to the cap).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation; settle it exactly once."""

    amount_usd: float


class BudgetGuard:
    def __init__(self, cap_usd: float, spent_usd: float = 0.0) -> None:
        if cap_usd <= 0:
            raise ValueError(f"budget cap must be positive, got {cap_usd}")
        self.cap_usd = cap_usd
        self._spent = spent_usd
        self._reserved = 0.0
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def spent_usd(self) -> float:
        return self._spent

    @property
    def reserved_usd(self) -> float:
        return self._reserved

    def try_reserve(self, amount_usd: float) -> Hold | None:
        """Reserve now if it fits, without waiting."""
        with self._lock:
            if self._spent + self._reserved + amount_usd <= self.cap_usd:
                self._reserved += amount_usd
                self._in_flight += 1
                return Hold(amount_usd)
            return None

    async def reserve(self, amount_usd: float) -> Hold | None:
        """Reserve ``amount_usd``, waiting for in-flight calls to settle if that could help."""
        while True:
            hold = self.try_reserve(amount_usd)
            if hold is not None:
                return hold
            with self._lock:
                if self._in_flight == 0 or self._spent + amount_usd > self.cap_usd:
                    return None
            await asyncio.sleep(_POLL_S)

    def settle(self, hold: Hold, actual_usd: float) -> None:
        """Replace a reservation by what the call actually cost."""
        with self._lock:
            self._reserved = max(self._reserved - hold.amount_usd, 0.0)
            self._in_flight -= 1
            self._spent += actual_usd
        if actual_usd > hold.amount_usd + 1e-12:
            log.warning(
                "a call cost %.6f USD, more than the %.6f USD reserved for it; the provider "
                "counted more tokens than the reservation bound",
                actual_usd,
                hold.amount_usd,
            )
