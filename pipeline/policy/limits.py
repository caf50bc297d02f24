"""Staying under each endpoint's quota, and resting endpoints that keep failing.

    gate = EndpointGate(rpm=600, tpm=200_000, max_concurrency=64)
    async with gate.slot(tokens=1_900):       # waits for request, token and concurrency room
        reply = await provider.complete(request)
    gate.observe(reply.limits)                 # the provider's own remaining/reset figures win
    gate.record_success() / gate.record_failure(retry_after=2.0)

Quotas are enforced as sliding 60-second windows, the way providers count them: at most
``rpm`` requests and ``tpm`` tokens (prompt estimate + max output, which is what OpenAI
counts at request time) in any minute. A pure window lets the whole minute's quota go
in the first second, so requests are also paced to at most ``rpm/60`` per second with a
small burst; together that keeps a fast client at the limit without tripping it.

When a response says the quota is used up (``remaining`` 0) or a 429 names a
``retry-after``, the whole endpoint pauses until then, not just the one request: the
next hundred calls would only collect the same 429. After ``cooldown_after`` failed
attempts in a row an endpoint cools down for ``cooldown_s`` and routing moves its
traffic to the next allowed candidate.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pipeline.providers.base import RateLimitInfo

WINDOW_S = 60.0
#: Share of the token quota left unused: docroute's token estimate is not the provider's
#: tokenizer, and a window packed to exactly 100% by our count tips over by theirs.
TOKEN_HEADROOM = 0.01
#: The provider counts a request when it arrives, a little after we admit it (a new
#: connection adds ~0.1 s). Our window forgets a request this much later than 60 s, so it
#: never frees room the provider still counts as used.
ARRIVAL_GUARD_S = 0.25
#: Requests allowed back to back before pacing applies, as a share of a minute's quota.
BURST_SHARE = 1 / 60


class _Window:
    """A sliding-window log of (time, weight); ``room`` says how long until ``weight`` fits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._log: deque[tuple[float, int]] = deque()
        self._sum = 0

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - WINDOW_S - ARRIVAL_GUARD_S:
            self._sum -= self._log.popleft()[1]

    def wait_for(self, weight: int, now: float) -> float:
        self._expire(now)
        weight = min(weight, self.limit)  # a single oversized request still goes, alone
        if self._sum + weight <= self.limit:
            return 0.0
        excess = self._sum + weight - self.limit
        for t, w in self._log:
            excess -= w
            if excess <= 0:
                return t + WINDOW_S + ARRIVAL_GUARD_S - now
        return WINDOW_S

    def add(self, weight: int, now: float) -> None:
        self._log.append((now, weight))
        self._sum += weight


@dataclass
class GateStats:
    requests: int = 0
    waited_s: float = 0.0
    pauses: int = 0
    cooldowns: int = 0


class EndpointGate:
    """Quota, pacing, concurrency and cooldown for one endpoint (shared by all its models)."""

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        cooldown_after: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._requests = _Window(rpm) if rpm else None
        self._tokens = _Window(int(tpm * (1 - TOKEN_HEADROOM))) if tpm else None
        self._interval = WINDOW_S / rpm if rpm else 0.0
        self._burst = max(1.0, rpm * BURST_SHARE) if rpm else 0.0
        self._credit = self._burst
        self._last = clock()
        self._max_concurrency = max_concurrency
        self._semaphore: asyncio.Semaphore | None = None
        self._paused_until = 0.0
        self._queued = 0
        self._cooldown_after = cooldown_after
        self._cooldown_s = cooldown_s
        self._failures = 0
        self._cool_until = 0.0
        self._clock = clock
        self._sleep = sleep
        self.stats = GateStats()

    def seconds_for(self, calls: int, tokens: int, *, concurrency: int, call_s: float) -> float:
        """About how long ``calls`` calls of ``tokens`` tokens in all take here: the longest
        of what the RPM and TPM windows allow and ``call_s`` per call, ``concurrency`` (or
        the endpoint's own cap) at once. What a batch job's deadline fallback plans with."""
        lanes = min(concurrency, self._max_concurrency or concurrency)
        needed = call_s * -(-calls // max(lanes, 1))
        if self._requests is not None:
            needed = max(needed, calls * self._interval)
        if self._tokens is not None:
            needed = max(needed, WINDOW_S * tokens / self._tokens.limit)
        return needed

    # -- availability ---------------------------------------------------------------------

    def cooling(self) -> bool:
        """True while the endpoint rests after repeated failures."""
        return self._clock() < self._cool_until

    def record_success(self) -> None:
        self._failures = 0

    def cooling_for(self) -> float:
        """Seconds until the endpoint is out of its cooldown (0 if it is not cooling)."""
        return max(self._cool_until - self._clock(), 0.0)

    def record_failure(self, retry_after: float | None = None) -> None:
        """A failed attempt that says the endpoint is unwell (5xx, timeout, connection).

        Rate limiting is not a failure: it is a quota signal, handled by ``pause``.
        """
        self._failures += 1
        if retry_after:
            self.pause(retry_after)
        if self._failures >= self._cooldown_after:
            self._cool_until = self._clock() + self._cooldown_s
            self._failures = 0
            self.stats.cooldowns += 1

    def pause(self, seconds: float) -> None:
        """No new request to this endpoint for ``seconds``."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self.stats.pauses += 1

    def observe(self, limits: RateLimitInfo | None) -> None:
        """Adopt the provider's view: quota used up means wait for its reset."""
        if limits is None:
            return
        for remaining, reset in (
            (limits.remaining_requests, limits.reset_requests_s),
            (limits.remaining_tokens, limits.reset_tokens_s),
        ):
            if remaining is not None and remaining <= 0 and reset:
                self.pause(reset)

    def wait_estimate(self, tokens: int) -> float:
        """Seconds a request of ``tokens`` would wait for quota now, behind those queued."""
        per_request = max(
            self._interval,
            WINDOW_S * tokens / self._tokens.limit if self._tokens is not None else 0.0,
        )
        return max(self._wait(tokens, self._clock()), 0.0) + self._queued * per_request

    # -- admission ------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        """Hold a concurrency slot and one admission for a request of ``tokens`` tokens."""
        semaphore = self._get_semaphore()
        if semaphore is None:
            await self._admit(tokens)
            yield
            return
        async with semaphore:
            await self._admit(tokens)
            yield

    def _get_semaphore(self) -> asyncio.Semaphore | None:
        if self._max_concurrency and self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._max_concurrency)
        return self._semaphore

    async def _admit(self, tokens: int) -> None:
        started = self._clock()
        self._queued += 1
        try:
            while True:
                now = self._clock()
                wait = self._wait(tokens, now)
                if wait <= 0:
                    self._take(tokens, now)
                    self.stats.requests += 1
                    self.stats.waited_s += now - started
                    return
                await self._sleep(min(wait, 1.0))
        finally:
            self._queued -= 1

    def _wait(self, tokens: int, now: float) -> float:
        waits = [self._paused_until - now]
        if self._requests is not None:
            waits.append(self._requests.wait_for(1, now))
            credit = min(self._burst, self._credit + (now - self._last) / self._interval)
            waits.append((1 - credit) * self._interval)
        if self._tokens is not None:
            waits.append(self._tokens.wait_for(tokens, now))
        return max(waits)

    def _take(self, tokens: int, now: float) -> None:
        if self._requests is not None:
            self._credit = min(self._burst, self._credit + (now - self._last) / self._interval) - 1
            self._last = now
            self._requests.add(1, now)
        if self._tokens is not None:
            self._tokens.add(min(tokens, self._tokens.limit), now)
