"""What an endpoint of the simulator does (``EndpointProfile``) and what it saw (``RequestRecord``).

Plain data, outside ``pipeline.simulator`` so that the config (a provider's ``simulator``
block) and the simulator both import it, and the config does not import the servers.

A profile is data, set per endpoint when it is added, or over HTTP with
``PUT /_sim/endpoints/{name}``::

    >>> EndpointProfile(rate_429=0.1, latency_ms=(5, 20)).rate_429
    0.1
    >>> EndpointProfile.model_validate({"fail_first": 2, "latency_ms": [1, 2]}).latency_ms
    (1.0, 2.0)
    >>> EndpointProfile(protocol="anthropic", script=["overloaded", "none"]).script
    ['overloaded', 'none']

Fault rates are shares of requests, drawn from a seeded generator (see ``app.py``), so a run
is reproducible; ``script``, ``fail_first`` and ``invalid_first`` give exact sequences for
tests; ``rpm`` / ``tpm`` are sliding-window quotas, answered with the vendor's 429.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Which vendor's wire an endpoint speaks. "gemini" is the OpenAI-compatible protocol with
#: Gemini's error bodies (a JSON array of ``{"error": {"code", "message", "status"}}``).
ProtocolName = Literal["openai", "anthropic", "mistral", "gemini"]

#: Every value of ``RequestRecord.fault`` (and of ``EndpointProfile.script``).
Fault = Literal[
    "none", "rate_limited", "server_error", "overloaded", "timeout", "dropped", "truncated",
    "invalid", "refusal", "auth", "bad_request",
]  # fmt: skip

#: ``RequestRecord.status`` of a request that got no HTTP response: dropped, or still held
#: when the client gave up (a ``timeout``).
NO_RESPONSE = 0

_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RATE_FIELDS = (
    "rate_429", "rate_500", "rate_503", "rate_timeout", "rate_drop", "rate_truncated",
    "rate_refusal",
)  # fmt: skip


def check_endpoint_name(name: str) -> str:
    """Return ``name`` if it can be one URL path segment, else raise ``ValueError``.

    >>> check_endpoint_name("eu-openai")
    'eu-openai'
    """
    if not isinstance(name, str) or not _ENDPOINT_NAME.fullmatch(name):
        raise ValueError(
            f"endpoint name {name!r} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _share(description: str) -> Any:
    return Field(default=0.0, ge=0, le=1, description=description)


class EndpointProfile(BaseModel):
    """Protocol, latency, faults, quotas and auth of one simulated endpoint.

    Immutable; unknown keys fail.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: ProtocolName = Field(
        default="openai",
        description="The wire protocol: openai, anthropic, mistral, or gemini (OpenAI-compatible "
        "with Gemini's JSON-array error bodies).",
    )
    latency_ms: tuple[float, float] = Field(
        default=(0.0, 0.0),
        description="Uniform range of added latency per request, in milliseconds.",
    )
    rate_429: float = _share("Share of requests answered 429 (rate limited).")
    rate_500: float = _share("Share of requests answered 500 (server error).")
    rate_503: float = _share(
        "Share of requests answered 'overloaded': 503, or 529 overloaded_error for anthropic."
    )
    rate_timeout: float = _share(
        "Share of requests held `hang_s` seconds before the answer, so the client times out."
    )
    rate_drop: float = _share(
        "Share of requests whose TCP connection is closed without any HTTP response."
    )
    rate_truncated: float = _share(
        "Share of requests answered 200 with the content cut mid-way and finish_reason "
        "'length' (anthropic: stop_reason 'max_tokens')."
    )
    rate_refusal: float = _share(
        "Share of requests the model refuses: openai `message.refusal`, anthropic stop_reason "
        "'refusal', mistral/gemini a plain-text refusal sentence instead of JSON."
    )
    invalid_rate: float = _share("Share of 200 answers that parse but break the schema.")
    hang_s: float = Field(
        default=30.0, ge=0, description="How long a `timeout` fault holds the request, seconds."
    )
    retry_after_s: float = Field(
        default=1.0, ge=0, description="Value of `retry-after` on injected (not quota) 429s."
    )
    script: list[Fault] = Field(
        default_factory=list,
        description="The n-th request (0-based) gets fault `script[n]` ('none' = the normal "
        "answer); requests after the script get the rate draws.",
    )
    fail_first: int = Field(
        default=0,
        ge=0,
        description="Requests 0..N-1 get 500 (where `script` does not say otherwise).",
    )
    invalid_first: int = Field(
        default=0, ge=0, description="The first N 200 answers are schema-invalid."
    )
    rpm: int | None = Field(
        default=None, ge=1, description="Requests per sliding window (60 s) before 429s."
    )
    tpm: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per sliding window (60 s) before 429s; a request costs its "
        "prompt tokens plus the max output tokens it asks for.",
    )
    window_s: float = Field(
        default=60.0, gt=0, description="Length of the rpm/tpm sliding window, seconds."
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description="When set, requests must carry it (`Authorization: Bearer`, or anthropic's "
        "`x-api-key`), else 401.",
    )
    echo_key_in_errors: bool = Field(
        default=False,
        description="401 messages quote the presented key in full (a careless provider).",
    )
    refuse_response_formats: list[str] = Field(
        default_factory=list,
        description="`response_format` types answered with an HTTP 500 every time, the way "
        "llama-cpp-python's server answers `json_schema` (e.g. ['json_schema']).",
    )
    seed: int = Field(default=0, description="Seed of fault and latency draws.")
    batch_turnaround_s: float = Field(
        default=2.0,
        gt=0,
        description="Seconds a batch job takes from create to completed (OpenAI's Batch API, "
        "Anthropic's Message Batches and Mistral's batch jobs alike): a tenth validating, "
        "eight tenths answering its lines one after another, a tenth finalizing.",
    )
    batch_expire_after_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds after create when a batch job not yet completed expires (its "
        "done lines kept, the rest failed as `batch_expired`, or `expired` in an anthropic "
        "batch's results); None = never.",
    )

    def __hash__(self) -> int:
        # Frozen, so hashable like before ``script`` (a list, as the contract says) existed.
        values = (tuple(v) if isinstance(v, list) else v for v in self.__dict__.values())
        return hash((type(self), *values))

    @model_validator(mode="after")
    def _check_ranges(self) -> EndpointProfile:
        low, high = self.latency_ms
        if not 0 <= low <= high:
            raise ValueError(f"latency_ms {self.latency_ms!r} needs 0 <= low <= high")
        if sum(getattr(self, name) for name in _RATE_FIELDS) > 1 + 1e-9:
            raise ValueError(f"the fault rates ({', '.join(_RATE_FIELDS)}) must sum to <= 1")
        return self


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the simulator answered (or refused), in arrival order.

    ``prompt_sha256`` hashes the first user message, so a test can find the calls made for
    a chunk: ``hashlib.sha256(chunk.text.encode()).hexdigest()``. ``status`` is
    ``NO_RESPONSE`` (0) for a dropped connection, and for a ``timeout`` whose client left
    before ``hang_s`` passed. ``batch_id`` names the batch job a request was answered in
    (billed at batch prices), None for a synchronous request.
    """

    endpoint: str
    model: str
    received_at: float
    status: int
    fault: Fault
    prompt_tokens: int
    completion_tokens: int
    prompt_sha256: str
    is_repair: bool
    batch_id: str | None = None  # the provider batch job that carried it; None if sent alone

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (what ``GET /_sim/requests`` lists)."""
        return asdict(self)
