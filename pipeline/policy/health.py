"""Endpoints taken out for the run, and why: a rejected key, or an error that repeats.

    health = EndpointHealth(repeats=3)
    with health.call(endpoint, chunk.chunk_id) as call:   # one call in flight
        try:
            reply = await provider.complete(request)
        except errors.ProviderError as exc:
            call.failed(exc)
            raise
        call.answered()
    health.out(endpoint)          # Disabled("endpoint_disabled", "llama/m disabled after …")
    health.reject_key(endpoint, "Invalid API Key")        # a 401/403: the provider is out

When is an error that repeats a property of the endpoint rather than bad luck? A server
that refuses a request shape (llama-cpp-python answers every ``json_schema`` request with
the same 500) and a server with random faults (whose 500s carry one fixed message too)
look the same call by call. What tells them apart is whether the endpoint has ever
answered. So an endpoint is disabled for the run when all of these hold:

- it has never answered in this run (any 200, even an invalid answer, proves that it
  accepts the request shape: from then on its errors are transient, as before);
- its last ``repeats`` counted errors were identical (same kind, HTTP status, message),
  on ``repeats`` distinct chunks (one chunk's retries are one piece of evidence; a
  different counted error starts the count again);
- no call to it is in flight: an error comes back in milliseconds, an answer in seconds,
  so a flaky endpoint's first errors arrive before its first answers. Waiting until every
  call made so far has come back means the rule never decides while an answer may still
  be on its way; a refusing endpoint's calls all come back fast, so it is still caught
  within the first round of calls.

With random faults at rate p, the first ``repeats`` calls all failing is p**repeats
(2.7% at p = 0.3 with one call at a time, far less with many, since every call in flight
must fail too) and the endpoint is only taken out of this run. Counted errors are the ones
that speak about the endpoint: HTTP errors other than quotas, overload and timeouts
(429, 503, 529, 408), an oversized prompt (the chunk's fault), a rejected key (handled
at once by ``reject_key``) and answers that may have been served (a cut connection, an
unreadable 200); and connections that could not be made at all (a stopped server).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pipeline import errors
from pipeline.models import Outcome
from pipeline.policy.routing import Endpoint

__all__ = ["Call", "Disabled", "EndpointHealth"]

Signature = tuple[str, int | None, str]


@dataclass(frozen=True, slots=True)
class Disabled:
    """Why an endpoint takes no more calls in this run: ``outcome`` for the results and
    the ledger, ``why`` in words (``mistral-eu rejected the key (Invalid API Key)``)."""

    outcome: Outcome
    why: str


@dataclass(slots=True)
class _Track:
    answered: bool = False
    in_flight: int = 0
    signature: Signature | None = None
    chunks: set[str] = field(default_factory=set)
    errors: int = 0

    def count(self, signature: Signature, chunk_id: str) -> None:
        if signature != self.signature:
            self.signature, self.chunks, self.errors = signature, set(), 0
        self.chunks.add(chunk_id)
        self.errors += 1


@dataclass(slots=True)
class Call:
    """One call in flight; say how it ended with ``answered`` or ``failed``."""

    endpoint: Endpoint
    chunk_id: str
    track: _Track
    disabled: Disabled | None = None
    """Set when this call's end disabled the endpoint (to log it once)."""

    def answered(self) -> None:
        self.track.answered = True

    def failed(self, exc: errors.ProviderError) -> None:
        signature = _signature(exc)
        if signature is not None:
            self.track.count(signature, self.chunk_id)


class EndpointHealth:
    """Which endpoints are out for the run (see the module docstring for the rule)."""

    def __init__(self, repeats: int = 3) -> None:
        self.repeats = repeats
        self._tracks: dict[str, _Track] = {}
        self._keys: dict[str, Disabled] = {}  # endpoint key → why
        self._providers: dict[str, Disabled] = {}  # provider → why (a rejected key)

    def out(self, endpoint: Endpoint) -> Disabled | None:
        """Why ``endpoint`` takes no more calls in this run, or None."""
        return self._providers.get(endpoint.provider) or self._keys.get(endpoint.key)

    def disabled(self) -> list[Disabled]:
        """Every disabling of this run, in the order it happened."""
        return [*self._providers.values(), *self._keys.values()]

    def reject_key(self, endpoint: Endpoint, message: str) -> Disabled | None:
        """The provider refused the key (401/403): every model of it is out. The new
        ``Disabled`` the first time, None after."""
        if endpoint.provider in self._providers:
            return None
        found = Disabled("auth_error", f"{endpoint.provider} rejected the key ({message})")
        self._providers[endpoint.provider] = found
        return found

    @contextmanager
    def call(self, endpoint: Endpoint, chunk_id: str) -> Iterator[Call]:
        """One call to ``endpoint`` for ``chunk_id``; on the way out the rule is applied."""
        track = self._tracks.setdefault(endpoint.key, _Track())
        track.in_flight += 1
        call = Call(endpoint, chunk_id, track)
        try:
            yield call
        finally:
            track.in_flight -= 1
            call.disabled = self._judge(endpoint, track)

    def _judge(self, endpoint: Endpoint, track: _Track) -> Disabled | None:
        """The new ``Disabled`` if the rule now holds for ``endpoint``, else None."""
        if track.answered or track.in_flight or endpoint.key in self._keys or self.repeats <= 0:
            return None
        if track.signature is None or len(track.chunks) < self.repeats:
            return None
        _, status, message = track.signature
        said = f"HTTP {status} {message}" if status is not None else message
        why = f"{endpoint.key} disabled after {track.errors} identical errors: {said}"
        found = self._keys[endpoint.key] = Disabled("endpoint_disabled", why)
        return found


#: Errors that say nothing about whether the endpoint can serve the request shape.
_NOT_COUNTED = (
    errors.RateLimited,
    errors.Overloaded,
    errors.Timeout,
    errors.AuthError,
    errors.ContextExceeded,
    errors.InvalidOutput,
)


def _signature(exc: errors.ProviderError) -> Signature | None:
    """What makes two errors "identical", or None for an error that is not counted."""
    if isinstance(exc, _NOT_COUNTED):
        return None
    if exc.billing_unknown:
        return None  # cut off after sending, or an unreadable 200: it may have been served
    return type(exc).__name__, exc.http_status, exc.message
