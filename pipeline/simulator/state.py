"""The simulator's memory: profiles, per-endpoint counters, quota windows and the request log.

Shared between the server's event-loop thread and the test or pipeline thread that asks
questions, so every method takes one short lock and never awaits while holding it:

    >>> state = SimulatorState()
    >>> state.set_profile("eu", EndpointProfile(fail_first=1))
    >>> state.arrive("eu", "body-sha"), state.arrive("eu", "body-sha")
    (Arrival(nth_request=0, nth_body=0), Arrival(nth_request=1, nth_body=1))

Quotas are sliding windows of the admitted requests' times and token costs; ``clock`` (a
monotonic clock in seconds) can be injected to test them without waiting:

    >>> now = [0.0]
    >>> state = SimulatorState(clock=lambda: now[0])
    >>> state.set_profile("eu", EndpointProfile(rpm=1))
    >>> state.admit("eu", 10).retry_after_s, state.admit("eu", 10).retry_after_s
    (None, 60.0)
    >>> now[0] = 60.0
    >>> quota = state.admit("eu", 10).quota
    >>> quota.limit_requests, quota.remaining_requests, quota.reset_requests_s, quota.limit_tokens
    (1, 0, 60.0, None)
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.sim_profiles import EndpointProfile, RequestRecord


@dataclass(frozen=True, slots=True)
class Arrival:
    """The place of a request among its endpoint's requests and among identical bodies."""

    nth_request: int
    nth_body: int


@dataclass(frozen=True, slots=True)
class QuotaView:
    """What the rate-limit headers say: limits, what is left, seconds until fully reset."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """The quota's verdict on one request: ``retry_after_s`` is None when it was admitted."""

    quota: QuotaView | None
    retry_after_s: float | None = None
    exceeded: Literal["requests", "tokens"] | None = None
    cost: int = 0


_UNLIMITED = Admission(None)


@dataclass(slots=True)
class _Window:
    """The admissions of the last ``window_s`` seconds, oldest first."""

    times: deque[float] = field(default_factory=deque)
    costs: deque[int] = field(default_factory=deque)
    tokens: int = 0

    def prune(self, now: float, window_s: float) -> None:
        horizon = now - window_s
        while self.times and self.times[0] <= horizon:
            self.times.popleft()
            self.tokens -= self.costs.popleft()

    def wait_for_requests(self, rpm: int, now: float, window_s: float) -> float:
        """Seconds until one more request fits under ``rpm``."""
        excess = len(self.times) - rpm
        return 0.0 if excess < 0 else self.times[excess] + window_s - now

    def wait_for_tokens(self, tpm: int, cost: int, now: float, window_s: float) -> float:
        """Seconds until ``cost`` more tokens fit under ``tpm`` (a whole window if never)."""
        needed = self.tokens + cost - tpm  # tokens that must leave the window first
        if needed <= 0:
            return 0.0
        if cost > tpm:
            return window_s
        freed = 0
        for t, c in zip(self.times, self.costs, strict=True):
            freed += c
            if freed >= needed:
                return t + window_s - now
        return window_s  # not reached: with every entry gone, cost <= tpm fits


@dataclass(slots=True)
class _Endpoint:
    profile: EndpointProfile
    requests: int = 0
    answers: int = 0
    bodies: dict[str, int] = field(default_factory=dict)
    window: _Window = field(default_factory=_Window)


@dataclass(slots=True)
class _Stats:
    """Running totals of one endpoint's log, so ``GET /_sim/stats`` costs nothing."""

    requests: int = 0
    by_fault: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    prompt_tokens: int = 0  # of 200 answers, like ``tokens_served``
    completion_tokens: int = 0
    batch_requests: int = 0  # of them, answered inside a batch job

    def add(self, record: RequestRecord, sign: int = 1) -> None:
        self.requests += sign
        self.batch_requests += sign if record.batch_id is not None else 0
        self.by_fault[record.fault] += sign
        self.by_status[record.status] += sign
        if record.status == 200:
            self.prompt_tokens += sign * record.prompt_tokens
            self.completion_tokens += sign * record.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        """The totals; ``batch_requests`` only once the endpoint answered a batch's line."""
        totals: dict[str, Any] = {
            "requests": self.requests,
            "by_fault": {k: v for k, v in self.by_fault.items() if v},
            "by_status": {str(k): v for k, v in self.by_status.items() if v},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        return totals | ({"batch_requests": self.batch_requests} if self.batch_requests else {})


class SimulatorState:
    """Thread-safe state of one simulator (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._endpoints: dict[str, _Endpoint] = {}
        self._records: list[RequestRecord] = []
        self._stats: dict[str, _Stats] = {}
        self._generation = 0  # bumped by reset(), so an old ticket cannot amend a new log
        self.holding = False  # answers wait while set (see ``hold``)
        self.drop_held = False

    def now(self) -> float:
        """The state's clock (monotonic seconds): quota windows and batch jobs run on it."""
        return self._clock()

    def hold(self) -> None:
        """Keep every answer not yet sent waiting (calls stay in flight) until ``release``."""
        self.drop_held = False
        self.holding = True

    def release(self, *, drop: bool = False) -> None:
        """Let held answers go; with ``drop`` their connections are dropped unanswered
        (logged as ``dropped``, no tokens served), as when the client died meanwhile."""
        self.drop_held = drop
        self.holding = False

    def set_profile(self, name: str, profile: EndpointProfile) -> None:
        """Add or replace an endpoint; replacing starts its counters and quota afresh."""
        with self._lock:
            self._endpoints[name] = _Endpoint(profile)

    def profile(self, name: str) -> EndpointProfile | None:
        """The endpoint's profile, or None if there is no such endpoint."""
        endpoint = self._endpoints.get(name)  # a dict read is atomic; no lock needed
        return endpoint.profile if endpoint else None

    def endpoint_names(self) -> list[str]:
        with self._lock:
            return list(self._endpoints)

    def admit(self, name: str, cost: int, *, consume: bool = True) -> Admission:
        """Check a request of ``cost`` tokens against the endpoint's rpm/tpm windows.

        Admitted requests (``consume``) enter the window; refused ones do not. With
        ``consume=False`` only the headers' view is computed (for 400/401 answers).
        """
        with self._lock:
            endpoint = self._endpoints[name]
            profile = endpoint.profile
            if profile.rpm is None and profile.tpm is None:
                return _UNLIMITED
            now, span, window = self._clock(), profile.window_s, endpoint.window
            window.prune(now, span)
            wait_r = window.wait_for_requests(profile.rpm, now, span) if profile.rpm else 0.0
            wait_t = window.wait_for_tokens(profile.tpm, cost, now, span) if profile.tpm else 0.0
            admitted = consume and wait_r <= 0 and wait_t <= 0
            if admitted:
                window.times.append(now)
                window.costs.append(cost)
                window.tokens += cost
            view = _view(profile, window, now)
        if admitted or not consume:
            return Admission(view, cost=cost)
        exceeded: Literal["requests", "tokens"] = "requests" if wait_r >= wait_t else "tokens"
        return Admission(view, round(max(wait_r, wait_t), 3), exceeded, cost)

    def arrive(self, name: str, body_sha256: str) -> Arrival:
        """Count a well-formed, authorised, admitted request; say how many came before it."""
        with self._lock:
            endpoint = self._endpoints[name]
            nth_body = endpoint.bodies.get(body_sha256, 0)
            endpoint.bodies[body_sha256] = nth_body + 1
            endpoint.requests += 1
            return Arrival(endpoint.requests - 1, nth_body)

    def next_answer(self, name: str) -> int:
        """Count a 200 answer of the endpoint; return how many came before it."""
        with self._lock:
            endpoint = self._endpoints[name]
            endpoint.answers += 1
            return endpoint.answers - 1

    def record(self, record: RequestRecord) -> tuple[int, int]:
        """Append to the log; return a ticket for ``amend``."""
        with self._lock:
            self._records.append(record)
            self._stats_of(record.endpoint).add(record)
            return self._generation, len(self._records) - 1

    def amend(self, ticket: tuple[int, int], record: RequestRecord) -> None:
        """Replace a logged record in place (a held request that was answered after all)."""
        generation, index = ticket
        with self._lock:
            if generation != self._generation:
                return
            old, self._records[index] = self._records[index], record
            self._stats_of(old.endpoint).add(old, -1)
            self._stats_of(record.endpoint).add(record)

    def records(self, endpoint: str | None = None) -> list[RequestRecord]:
        """A snapshot of the log, in arrival order, optionally of one endpoint."""
        with self._lock:
            records = list(self._records)
        return records if endpoint is None else [r for r in records if r.endpoint == endpoint]

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint: requests, counts by fault and by status, tokens of 200 answers."""
        with self._lock:
            return {name: stats.to_dict() for name, stats in self._stats.items()}

    def tokens_served(self, endpoint: str | None = None) -> tuple[int, int]:
        """(prompt, completion) token totals of the 200 answers."""
        with self._lock:
            chosen = [s for name, s in self._stats.items() if endpoint is None or name == endpoint]
            return sum(s.prompt_tokens for s in chosen), sum(s.completion_tokens for s in chosen)

    def reset(self) -> None:
        """Forget the log and every endpoint's counters and quota; keep the profiles."""
        with self._lock:
            self._records.clear()
            self._stats.clear()
            self._generation += 1
            for name, endpoint in self._endpoints.items():
                self._endpoints[name] = _Endpoint(endpoint.profile)

    def _stats_of(self, name: str) -> _Stats:
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = _Stats()
        return stats


def _view(profile: EndpointProfile, window: _Window, now: float) -> QuotaView:
    reset = round(window.times[-1] + profile.window_s - now, 3) if window.times else 0.0
    rpm, tpm = profile.rpm, profile.tpm
    return QuotaView(
        rpm,
        None if rpm is None else max(rpm - len(window.times), 0),
        None if rpm is None else reset,
        tpm,
        None if tpm is None else max(tpm - window.tokens, 0),
        None if tpm is None else reset,
    )
