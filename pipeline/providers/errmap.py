"""The one mapping from an HTTP failure to the project's error tree, shared by every adapter.

    raise by_status(429, "slow down", Fields("openai-eu", "gpt-4.1-mini"), headers=h) from exc

Each adapter reads its SDK's exception (status, headers, body) and calls ``by_status`` or
``transport``, so a 429 means the same ``RateLimited`` whichever vendor sent it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from pipeline import errors
from pipeline.providers.base import RateLimitInfo
from pipeline.providers.headers import retry_after as read_retry_after

# How vendors say "the prompt does not fit": OpenAI-style servers (vLLM, Together, …),
# Anthropic ("prompt is too long"), Mistral ("… too large for model with … maximum context
# length") and Gemini ("The input token count (…) exceeds the maximum number of tokens").
_CONTEXT = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long"
    r"|input token count .*exceeds|too many (input )?tokens",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Fields:
    """What every translated error carries to the ledger."""

    provider: str
    model: str
    http_status: int | None = None
    request_id: str | None = None
    limits: RateLimitInfo | None = None

    def error(
        self, kind: type[errors.ProviderError], message: str, retry_after: float | None = None
    ) -> errors.ProviderError:
        """``kind(message)`` carrying these fields."""
        return kind(
            message,
            provider=self.provider,
            model=self.model,
            http_status=self.http_status,
            retry_after=retry_after,
            request_id=self.request_id,
            limits=self.limits,
        )


def mentions_context_overflow(message: str | None, code: str | None = None) -> bool:
    """Whether a 400's code or message says the prompt is larger than the model's window."""
    if code in {"context_length_exceeded", "prompt_too_long"}:
        return True
    return bool(message and _CONTEXT.search(message))


def by_status(
    status: int | None,
    message: str,
    fields: Fields,
    *,
    headers: Mapping[str, str] | None = None,
    context_exceeded: bool = False,
    retry_after: float | None = None,
) -> errors.ProviderError:
    """The error for an HTTP error response; ``retry_after`` defaults to the headers' value."""
    wait = retry_after if retry_after is not None else read_retry_after(headers or {})
    if status == 429:
        return fields.error(errors.RateLimited, message, wait)
    if status in (503, 529):
        return fields.error(errors.Overloaded, message, wait)
    if status == 408:
        return fields.error(errors.Timeout, message)
    if status is not None and status >= 500:
        return fields.error(errors.ServerError, message)
    if status in (401, 403):
        return fields.error(errors.AuthError, message)
    if context_exceeded:
        return fields.error(errors.ContextExceeded, message)
    return fields.error(errors.BadRequest, message)


def transport(timed_out: bool, message: str, fields: Fields) -> errors.ProviderError:
    """No HTTP answer at all: the request timed out, or the connection failed or was cut."""
    return fields.error(errors.Timeout if timed_out else errors.ConnectionDropped, message)


def protocol_violation(message: str, fields: Fields) -> errors.ProviderError:
    """A 200 whose body the SDK could not read as the protocol's response type."""
    return fields.error(errors.ServerError, f"response did not match the protocol: {message}")


def timed_out(exc: BaseException) -> bool:
    """Whether a transport error the SDK calls a timeout really was one.

    The SDK's aiohttp transport reports every ``aiohttp.ClientConnectionError`` (a server
    closing the connection mid-request included) as a connect timeout; the original error
    is in the exception chain, so look there.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, aiohttp.ClientConnectionError):
            return isinstance(seen, TimeoutError)  # ServerTimeoutError is both
        seen = seen.__cause__ or seen.__context__
    return True
