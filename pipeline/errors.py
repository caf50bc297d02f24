"""The project's error tree. Adapters translate SDK exceptions into it at the edge; the
router and the ledger read only these types and their fields.

    DocrouteError
    ├── ConfigError                 a bad docroute.yaml or command line (before any work)
    ├── StageError                  a stage failed for a whole batch (names stage and batch)
    ├── LedgerWriteError            an attempt could not be journaled: the batch stops
    └── ProviderError               one attempt at one endpoint went wrong
        ├── TransientError          worth retrying the same endpoint after a backoff
        │   ├── RateLimited         429, with retry_after when the provider said
        │   ├── Overloaded          529 / 503 "overloaded"
        │   ├── ServerError         other 5xx
        │   ├── Timeout             no answer in time
        │   └── ConnectionDropped   connection refused, reset or cut off
        ├── TerminalError           this endpoint will not serve this request: next candidate
        │   ├── AuthError           401 / 403: the endpoint is disabled for the run
        │   ├── BadRequest          400 / 404 / 422
        │   └── ContextExceeded     the prompt does not fit the model's window
        └── InvalidOutput           a 200 answer that is unusable: repair once, then reroute
            │                       (kind: unparseable, schema_invalid, refusal, empty)
            └── OutputTruncated     cut off at the output cap: more room once, never reroute

Every ProviderError carries what the ledger records: ``provider``, ``model``,
``http_status``, ``retry_after`` and a message that has been scrubbed of secrets.
``billing_unknown`` says the request may have reached the provider, and been billed,
without an answer that says for how much (a timeout or a connection cut after sending, an
unreadable 200): such an attempt is booked at its reserved worst case, never at $0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pipeline.models import Outcome, Usage

if TYPE_CHECKING:
    from pipeline.providers.base import RateLimitInfo

InvalidKind = Literal["unparseable", "truncated", "schema_invalid", "refusal", "empty"]


class DocrouteError(Exception):
    """Base of every error docroute raises on purpose."""


class ConfigError(DocrouteError):
    """The configuration or a command-line value is wrong; the message says which and why."""


class LedgerWriteError(DocrouteError):
    """An attempt could not be written to the journal (a full disk, a closed journal).

    Infrastructure, not data: without its journal line a kill could lose the call's cost,
    so no further call is made and the batch fails (its siblings are cancelled).
    """


Stage = Literal["ingest", "dispatch", "store"]


class StageError(DocrouteError):
    """A pipeline stage failed for a whole batch (infrastructure, not a chunk's data):
    ``ingest`` (reading the corpus), ``dispatch`` (the calls) or ``store`` (writing the
    batch's parts or journal). ``batch_id`` is None when no batch was formed yet."""

    def __init__(self, stage: Stage, batch_id: str | None, cause: BaseException) -> None:
        where = f"for batch {batch_id}" if batch_id else "while reading the corpus"
        super().__init__(f"stage {stage!r} failed {where}: {cause}")
        self.stage = stage
        self.batch_id = batch_id


class ProviderError(DocrouteError):
    """One attempt failed. ``outcome`` is the ledger value for it."""

    outcome: Outcome = "server_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        usage: Usage | None = None,
        request_id: str | None = None,
        limits: RateLimitInfo | None = None,
        billing_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.billing_unknown = billing_unknown
        self.provider = provider
        self.model = model
        self.http_status = http_status
        self.retry_after = retry_after
        self.usage = usage or Usage()
        self.request_id = request_id
        self.limits = limits


class TransientError(ProviderError):
    """Retry the same endpoint after a backoff (honouring ``retry_after``)."""


class RateLimited(TransientError):
    outcome: Outcome = "rate_limited"


class Overloaded(TransientError):
    outcome: Outcome = "overloaded"


class ServerError(TransientError):
    outcome: Outcome = "server_error"


class Timeout(TransientError):
    outcome: Outcome = "timeout"


class ConnectionDropped(TransientError):
    outcome: Outcome = "connection_error"


class TerminalError(ProviderError):
    """Do not retry this endpoint for this request; try the next candidate."""


class AuthError(TerminalError):
    outcome: Outcome = "auth_error"


class BadRequest(TerminalError):
    outcome: Outcome = "bad_request"


class ContextExceeded(TerminalError):
    outcome: Outcome = "context_exceeded"


class InvalidOutput(ProviderError):
    """The provider answered (and billed) but the answer cannot be used."""

    outcome: Outcome = "invalid_output"

    def __init__(
        self,
        message: str,
        *,
        kind: InvalidKind,
        raw: str | None = None,
        usage: Usage | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, usage=usage, request_id=request_id, http_status=http_status)
        self.kind = kind
        self.raw = raw


class OutputTruncated(InvalidOutput):
    """The answer was cut off at the output-token cap (``finish_reason`` length).

    Not the endpoint's fault: a dearer endpoint with the same cap would be cut off too.
    The dispatcher retries once with more room where the model allows, then stops.
    """

    outcome: Outcome = "output_truncated"
