"""What an endpoint of the simulator does (``EndpointProfile``) and what it saw (``RequestRecord``).

A profile is data, set per endpoint when it is added, or over HTTP with
``PUT /_sim/endpoints/{name}``::

    >>> EndpointProfile(rate_429=0.1, latency_ms=(5, 20)).rate_429
    0.1
    >>> EndpointProfile.model_validate({"fail_first": 2, "latency_ms": [1, 2]}).latency_ms
    (1.0, 2.0)

Fault rates are shares of requests, drawn from a seeded generator (see ``app.py``), so a run
is reproducible; ``fail_first`` / ``invalid_first`` script exact sequences for tests.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Every value of ``RequestRecord.fault``. ``bad_request`` (400) is an addition to the
#: six the pipeline reads; it marks requests the simulator refused to answer.
Fault = Literal[
    "none", "rate_limited", "server_error", "invalid", "truncated", "auth", "bad_request"
]

_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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


class EndpointProfile(BaseModel):
    """Latency, fault rates and auth of one simulated endpoint. Immutable; unknown keys fail."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: tuple[float, float] = Field(
        default=(0.0, 0.0),
        description="Uniform range of added latency per request, in milliseconds.",
    )
    rate_429: float = Field(default=0.0, ge=0, le=1, description="Share of requests answered 429.")
    rate_500: float = Field(default=0.0, ge=0, le=1, description="Share of requests answered 500.")
    invalid_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of 200 answers that parse but break the schema."
    )
    retry_after_s: float = Field(default=1.0, ge=0, description="Value of `retry-after` on 429s.")
    fail_first: int = Field(default=0, ge=0, description="The first N requests get 500.")
    invalid_first: int = Field(
        default=0, ge=0, description="The first N 200 answers are schema-invalid."
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description="When set, requests must carry `Bearer <api_key>`, else 401.",
    )
    echo_key_in_errors: bool = Field(
        default=False,
        description="401 messages quote the presented key in full (a careless provider).",
    )
    seed: int = Field(default=0, description="Seed of fault and latency draws.")

    @model_validator(mode="after")
    def _check_ranges(self) -> EndpointProfile:
        low, high = self.latency_ms
        if not 0 <= low <= high:
            raise ValueError(f"latency_ms {self.latency_ms!r} needs 0 <= low <= high")
        if self.rate_429 + self.rate_500 > 1:
            raise ValueError("rate_429 + rate_500 must not exceed 1")
        return self


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the simulator answered (or refused), in arrival order.

    ``prompt_sha256`` hashes the first user message, so a test can find the calls made for
    a chunk: ``hashlib.sha256(chunk.text.encode()).hexdigest()``.
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

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (what ``GET /_sim/requests`` lists)."""
        return asdict(self)
