"""The simulator's memory: profiles, per-endpoint counters and the request log.

Shared between the server's event-loop thread and the test or pipeline thread that asks
questions, so every method takes one short lock and never awaits while holding it:

    >>> state = SimulatorState()
    >>> state.set_profile("eu", EndpointProfile(fail_first=1))
    >>> state.arrive("eu", "body-sha"), state.arrive("eu", "body-sha")
    (Arrival(nth_request=0, nth_body=0), Arrival(nth_request=1, nth_body=1))
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .profiles import EndpointProfile, RequestRecord


@dataclass(frozen=True, slots=True)
class Arrival:
    """The place of a request among its endpoint's requests and among identical bodies."""

    nth_request: int
    nth_body: int


@dataclass(slots=True)
class _Endpoint:
    profile: EndpointProfile
    requests: int = 0
    answers: int = 0
    bodies: dict[str, int] = field(default_factory=dict)


class SimulatorState:
    """Thread-safe state of one simulator (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._records: list[RequestRecord] = []

    def set_profile(self, name: str, profile: EndpointProfile) -> None:
        """Add or replace an endpoint; replacing starts its counters afresh."""
        with self._lock:
            self._endpoints[name] = _Endpoint(profile)

    def profile(self, name: str) -> EndpointProfile | None:
        """The endpoint's profile, or None if there is no such endpoint."""
        endpoint = self._endpoints.get(name)  # a dict read is atomic; no lock needed
        return endpoint.profile if endpoint else None

    def endpoint_names(self) -> list[str]:
        with self._lock:
            return list(self._endpoints)

    def arrive(self, name: str, body_sha256: str) -> Arrival:
        """Count a well-formed, authorised request; say how many came before it."""
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

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self, endpoint: str | None = None) -> list[RequestRecord]:
        """A snapshot of the log, in arrival order, optionally of one endpoint."""
        with self._lock:
            records = list(self._records)
        return records if endpoint is None else [r for r in records if r.endpoint == endpoint]

    def tokens_served(self, endpoint: str | None = None) -> tuple[int, int]:
        """(prompt, completion) token totals of the 200 answers."""
        served = [r for r in self.records(endpoint) if r.status == 200]
        return sum(r.prompt_tokens for r in served), sum(r.completion_tokens for r in served)

    def reset(self) -> None:
        """Forget the log and every endpoint's counters; keep the profiles."""
        with self._lock:
            self._records.clear()
            for name, endpoint in self._endpoints.items():
                self._endpoints[name] = _Endpoint(endpoint.profile)
