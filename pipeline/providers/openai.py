"""OpenAI chat completions through the official ``openai`` SDK.

Structured output is asked for in the endpoint's structured mode (``structured.py``:
``response_format`` ``json_schema`` with ``strict: true`` unless a preset or the config
says otherwise). The SDK's own retries are off (``max_retries=0``): each call is one HTTP
attempt. Every SDK exception is translated here into ``pipeline.errors`` and nothing above
this module sees an ``openai`` type.

The same adapter serves ``openai_compatible`` endpoints (Gemini, Groq, Together, xAI,
vLLM, Ollama, …). A ``Preset`` (see ``presets.py``) gives such a service's default base
URL and its quirks as data: the max-tokens field it takes, its structured mode and the
shape of its error bodies.

    OpenAICompatibleProvider(settings, preset="gemini")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import openai
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletion

from pipeline import errors
from pipeline.models import Usage
from pipeline.providers.base import ChatRequest, EndpointSettings, ProviderReply, RateLimitInfo
from pipeline.providers.errmap import (
    Fields,
    by_status,
    cap,
    connect_failure,
    mentions_context_overflow,
    protocol_violation,
    server_message,
    timed_out,
    transport,
)
from pipeline.providers.headers import openai_limits, parse_duration
from pipeline.providers.openai_batch import OpenAIBatches
from pipeline.providers.presets import ErrorShape, Preset, get_preset
from pipeline.providers.structured import openai_fields
from pipeline.secrets import scrub

# vLLM and Ollama ignore the key but the SDK insists on one.
_KEYLESS = "no-key"


class OpenAIProvider(OpenAIBatches):
    """Adapter for the OpenAI chat-completions protocol (and its Batch API: ``openai_batch``)."""

    max_tokens_param = "max_completion_tokens"
    error_shape: ErrorShape = "object"
    batch_enabled = True

    def __init__(self, settings: EndpointSettings) -> None:
        self.name = settings.name
        key = settings.api_key.get_secret_value() if settings.api_key else _KEYLESS
        self._client = AsyncOpenAI(
            api_key=key,
            base_url=settings.base_url,
            max_retries=0,
            timeout=settings.timeout_s,
            # The SDK's aiohttp transport: a third less CPU per call than httpx2's own at
            # hundreds of calls in flight (bench/dispatch.py).
            http_client=DefaultAioHttpClient(),
            _strict_response_validation=settings.strict_validation,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, request: ChatRequest) -> ProviderReply:
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                **self._params(request)
            )
            completion = raw.parse()
        except openai.APIError as exc:
            raise self._translate(exc, request.model) from exc
        except ValueError as exc:  # a 200 whose body is not JSON
            message = scrub(str(exc)) or type(exc).__name__
            raise protocol_violation(message, Fields(self.name, request.model)) from exc
        return reply_of(
            completion,
            raw.headers.get("x-request-id") or completion.id,
            openai_limits(raw.headers),
        )

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of ``request`` as sent (what a batch job's line carries)."""
        params = self._params(request)
        extra = params.pop("extra_body")
        del params["messages"]  # the SDK's placeholder: ``extra_body`` carries them
        return {**params, **extra}

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            # Messages and schema are plain JSON already; sent as-is through extra_body, which
            # the SDK merges over the body, they skip its per-call TypedDict transform (about
            # 1 ms of CPU per call here) that would produce the same JSON. The fields asking
            # for the schema depend on the endpoint's structured mode (``structured``).
            "messages": [],
            "extra_body": openai_fields(request),
            self.max_tokens_param: request.max_output_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    def _translate(self, exc: openai.APIError, model: str) -> errors.ProviderError:
        response = getattr(exc, "response", None)
        headers = response.headers if response is not None else {}
        fields = Fields(
            self.name,
            model,
            http_status=getattr(exc, "status_code", None),
            request_id=headers.get("x-request-id"),
            limits=openai_limits(headers),
        )
        said = _READERS[self.error_shape](exc)
        message = cap(scrub(said.message) or type(exc).__name__)
        if isinstance(exc, openai.APIConnectionError):
            # The aiohttp transport calls a refused connection "Request timed out.".
            message = scrub(connect_failure(exc, exc.request.url)) or message
            # APITimeoutError is an APIConnectionError; aiohttp's errors are not all timeouts.
            late = isinstance(exc, openai.APITimeoutError) and timed_out(exc)
            return transport(late, message, fields, cause=exc)
        if isinstance(exc, openai.APIResponseValidationError):
            return protocol_violation(message, fields)
        return by_status(
            fields.http_status,
            message,
            fields,
            headers=headers,
            context_exceeded=mentions_context_overflow(said.message, said.code),
            retry_after=said.retry_after,
        )


@dataclass(frozen=True, slots=True)
class _Said:
    """What an error body says, whatever its shape."""

    message: str | None
    code: str | None = None
    retry_after: float | None = None


def _object_said(exc: openai.APIError) -> _Said:
    """OpenAI's shape, and any other: the server's own words wherever its body keeps them
    (``error.message``, ``detail``, ``message``, plain text; see ``server_message``), else
    the SDK's message (``Error code: 401`` for an empty body, or a transport error)."""
    code = getattr(exc, "code", None)
    said = server_message(exc.body) if isinstance(exc, openai.APIStatusError) else None
    return _Said(said or str(exc.message), code if isinstance(code, str) else None)


def _array_said(exc: openai.APIError) -> _Said:
    """Google's shape, ``[{"error": {"code", "message", "status", "details"}}]``, which the
    SDK does not read (its message is a bare ``Error code: 429``)."""
    body = exc.body
    first = body[0] if isinstance(body, list) and body else body
    error = first.get("error") if isinstance(first, dict) else None
    if not isinstance(error, dict) or not error.get("message"):
        return _object_said(exc)
    status = error.get("status")
    message = str(error["message"]) + (f" ({status})" if status else "")
    return _Said(message, str(status) if status else None, _retry_delay(error.get("details")))


def _retry_delay(details: Any) -> float | None:
    """``google.rpc.RetryInfo``'s ``retryDelay`` (``"7s"``) among an error's details."""
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and isinstance(item.get("retryDelay"), str):
            return parse_duration(item["retryDelay"])
    return None


_READERS: dict[ErrorShape, Callable[[openai.APIError], _Said]] = {
    "object": _object_said,
    "array": _array_said,
}


def reply_of(
    completion: ChatCompletion, request_id: str | None, limits: RateLimitInfo | None
) -> ProviderReply:
    """The adapter's reply for a parsed completion (a call's, or a batch job's line)."""
    choice = completion.choices[0] if completion.choices else None
    return ProviderReply(
        text=choice.message.content if choice else None,
        finish_reason=choice.finish_reason if choice else None,
        refusal=choice.message.refusal if choice else None,
        usage=_usage(completion.usage),
        request_id=request_id,
        model_reported=completion.model,
        limits=limits,
    )


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cached_input_tokens=cached,
    )


class OpenAICompatibleProvider(OpenAIProvider):
    """vLLM, Ollama, Groq, Together, xAI, Gemini's OpenAI endpoint, …

    ``preset`` (a name in ``PRESETS`` or a ``Preset``) supplies the base URL when the
    settings have none, the max-tokens field and the error-body shape.
    """

    max_tokens_param = "max_tokens"

    def __init__(self, settings: EndpointSettings, preset: str | Preset | None = None) -> None:
        found = get_preset(preset) if isinstance(preset, str) else preset
        if found is not None:
            self.max_tokens_param = found.max_tokens_param
            self.error_shape = found.error_shape
            if not settings.base_url:
                settings = replace(settings, base_url=found.base_url)
        self.preset = found
        # Only a service known to speak OpenAI's Batch API gets batch jobs (``Preset.batch``).
        self.batch_enabled = found is not None and found.batch
        super().__init__(settings)
