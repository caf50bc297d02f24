"""The one contract every provider adapter meets.

    reply = await provider.complete(ChatRequest(model="gpt-4.1-mini", messages=[...], ...))

An adapter turns a ``ChatRequest`` into a ``ProviderReply`` for every answer the
provider gave (HTTP 200), valid or not, so its usage can be billed; anything else it
raises as a ``pipeline.errors.ProviderError`` subclass. Adapters make exactly one HTTP
attempt per call: retries, backoff and rerouting belong to the dispatcher, so every
attempt is ledgered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import SecretStr

from pipeline.models import Usage


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What a provider said about its quota, normalised from its own headers.

    ``None`` means the provider did not say. Reset times are seconds from now.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    schema_name: str
    json_schema: dict[str, Any]
    max_output_tokens: int
    temperature: float | None = None
    structured_mode: str = "json_schema"  # or "tool": a forced tool call carries the answer


@dataclass(frozen=True, slots=True)
class ProviderReply:
    text: str | None
    finish_reason: str | None
    usage: Usage
    refusal: str | None = None
    request_id: str | None = None
    model_reported: str | None = None
    limits: RateLimitInfo | None = None


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    """What an adapter needs to reach one endpoint."""

    name: str
    base_url: str | None
    api_key: SecretStr | None
    timeout_s: float
    strict_validation: bool = False  # reject responses that do not match the SDK's types
    options: dict[str, Any] = field(
        default_factory=dict
    )  # per-kind settings, e.g. structured_output mode


class Provider(Protocol):
    name: str

    async def complete(self, request: ChatRequest) -> ProviderReply: ...

    async def aclose(self) -> None: ...
