"""The one mapping from an HTTP failure to the project's error tree, shared by every adapter.

    raise by_status(429, "slow down", Fields("openai-eu", "gpt-4.1-mini"), headers=h) from exc

Each adapter reads its SDK's exception (status, headers, body) and calls ``by_status`` or
``transport``, so a 429 means the same ``RateLimited`` whichever vendor sent it.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes, outermost first (chains are short; a cycle must not hang us)."""
    seen: BaseException | None = exc
    for _ in range(32):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def never_sent(exc: BaseException) -> bool:
    """Whether ``exc``'s chain proves no byte of the request was sent.

    The SDKs' aiohttp transport reports every aiohttp connection error as an httpx
    ``ConnectTimeout`` (a server that hung up mid-request included), so an aiohttp error in
    the chain is the one that decides.
    """
    chain = list(_chain(exc))
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


#: The most of a server's own words an error message keeps (a proxy's HTML page can be
#: many kilobytes; the ledger wants the sentence, not the page).
MESSAGE_CAP = 500


def cap(text: str, limit: int = MESSAGE_CAP) -> str:
    """``text`` on one line, at most ``limit`` characters (scrub it first: a key cut in
    half would no longer look like a key)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def server_message(body: Any) -> str | None:
    """What an error body says, whatever its shape, or None when it says nothing.

    Reads ``{"error": {"message": …}}`` (OpenAI, llama.cpp, vLLM), ``{"error": "…"}``
    (Ollama), ``{"message": …}`` (Mistral), FastAPI's ``{"detail": "…"}`` and
    ``{"detail": [{"msg": …}, …]}`` (llama-cpp-python), a JSON array of those (Google),
    and any other text as it is (a plain-text or HTML body). ``body`` is what the SDK kept:
    decoded JSON, or the raw text.
    """
    if isinstance(body, str | bytes):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            decoded = json.loads(text)
        except ValueError:
            return text.strip() or None
        return server_message(decoded) if isinstance(decoded, dict | list) else text.strip()
    if isinstance(body, list):
        return server_message(body[0]) if body else None
    if not isinstance(body, dict):
        return None
    for key in ("error", "message", "detail", "msg"):
        found = _said_by(body.get(key))
        if found:
            return found
    return None


def _said_by(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict):
        return server_message(value)
    if isinstance(value, list):  # FastAPI's validation errors: one message per problem
        parts = [server_message(v) if isinstance(v, dict) else str(v) for v in value]
        return "; ".join(p for p in parts if p) or None
    return None


def connect_failure(exc: BaseException, url: Any) -> str | None:
    """``could not connect to http://host:port/v1 (connection refused)`` when ``exc``'s
    chain shows the connection was never made, else None.

    The SDKs' aiohttp transport words a refused connection as "Request timed out."; the
    OS's reason is further down the chain. ``url`` loses its query and credentials.
    """
    if not never_sent(exc):
        return None
    return f"could not connect to {_plain_url(str(url))} ({_connect_reason(exc)})"


def _plain_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _connect_reason(exc: BaseException) -> str:
    """The OS's reason (an errno, anywhere in the chain) wins over the SDK's wrapper, which
    may be a ``ConnectTimeout`` for any aiohttp failure."""
    chain = list(_chain(exc))
    for seen in chain:
        if isinstance(seen, socket.gaierror | aiohttp.ClientConnectorDNSError):
            return "the host name does not resolve"
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
    for seen in chain:
        if isinstance(seen, aiohttp.ConnectionTimeoutError | httpx2.ConnectTimeout):
            return "timed out connecting"
        if isinstance(seen, httpx2.PoolTimeout):
            return "no pooled connection became free in time"
    return type(chain[-1]).__name__
