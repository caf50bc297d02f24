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
import httpx2

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
        self,
        kind: type[errors.ProviderError],
        message: str,
        retry_after: float | None = None,
        *,
        billing_unknown: bool = False,
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
            billing_unknown=billing_unknown,
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


def transport(
    timed_out: bool, message: str, fields: Fields, *, cause: BaseException | None = None
) -> errors.ProviderError:
    """No HTTP answer at all: the request timed out, or the connection failed or was cut.

    Unless ``cause`` shows the connection was never made (so no request left), the
    provider may have received the request and billed it: ``billing_unknown``.
    """
    kind = errors.Timeout if timed_out else errors.ConnectionDropped
    unknown = cause is None or not never_sent(cause)
    return fields.error(kind, message, billing_unknown=unknown)


def protocol_violation(message: str, fields: Fields) -> errors.ProviderError:
    """A 200 whose body the SDK could not read as the protocol's response type (its usage
    is unknown, though the provider billed it)."""
    return fields.error(
        errors.ServerError,
        f"response did not match the protocol: {message}",
        billing_unknown=True,
    )


#: Transport failures that happen before a request can leave: connecting failed (refused,
#: unreachable, DNS), timed out connecting, or no pooled connection became free.
_NOT_SENT_AIOHTTP: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
)
_NOT_SENT_HTTPX: tuple[type[BaseException], ...] = (
    httpx2.ConnectError,
    httpx2.ConnectTimeout,
    httpx2.PoolTimeout,
    ConnectionRefusedError,
)


def never_sent(exc: BaseException) -> bool:
    """Whether ``exc``'s chain proves no byte of the request was sent.

    The SDKs' aiohttp transport reports every aiohttp connection error as an httpx
    ``ConnectTimeout`` (a server that hung up mid-request included), so an aiohttp error in
    the chain is the one that decides.
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 32:  # chains are short; a cycle must not hang us
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    first_aiohttp = next((e for e in chain if isinstance(e, aiohttp.ClientConnectionError)), None)
    if first_aiohttp is not None:
        return isinstance(first_aiohttp, _NOT_SENT_AIOHTTP)
    return any(isinstance(e, _NOT_SENT_HTTPX) for e in chain)


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
