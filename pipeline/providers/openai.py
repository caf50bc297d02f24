"""OpenAI chat completions through the official ``openai`` SDK.

Structured output uses ``response_format`` ``json_schema`` with ``strict: true``. The
SDK's own retries are off (``max_retries=0``): each call is one HTTP attempt. Every SDK
exception is translated here into ``pipeline.errors`` and nothing above this module sees
an ``openai`` type.

The same adapter serves ``openai_compatible`` endpoints (vLLM, Ollama, Groq, …), which
take ``max_tokens`` rather than ``max_completion_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import openai
from openai import AsyncOpenAI

from pipeline import errors
from pipeline.models import Usage
from pipeline.providers.base import ChatRequest, EndpointSettings, ProviderReply
from pipeline.providers.headers import openai_limits, retry_after
from pipeline.secrets import scrub

# vLLM and Ollama ignore the key but the SDK insists on one.
_KEYLESS = "no-key"


class OpenAIProvider:
    """Adapter for the OpenAI chat-completions protocol."""

    max_tokens_param = "max_completion_tokens"

    def __init__(self, settings: EndpointSettings) -> None:
        self.name = settings.name
        key = settings.api_key.get_secret_value() if settings.api_key else _KEYLESS
        self._client = AsyncOpenAI(
            api_key=key,
            base_url=settings.base_url,
            max_retries=0,
            timeout=settings.timeout_s,
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
        choice = completion.choices[0] if completion.choices else None
        return ProviderReply(
            text=choice.message.content if choice else None,
            finish_reason=choice.finish_reason if choice else None,
            refusal=choice.message.refusal if choice else None,
            usage=_usage(completion.usage),
            request_id=raw.headers.get("x-request-id") or completion.id,
            model_reported=completion.model,
            limits=openai_limits(raw.headers),
        )

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name,
                    "schema": request.json_schema,
                    "strict": True,
                },
            },
            self.max_tokens_param: request.max_output_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    def _translate(self, exc: openai.APIError, model: str) -> errors.ProviderError:
        status = getattr(exc, "status_code", None)
        headers = _headers(exc)
        kw: dict[str, Any] = {
            "provider": self.name,
            "model": model,
            "http_status": status,
            "request_id": headers.get("x-request-id"),
            "limits": openai_limits(headers),
        }
        message = scrub(str(exc.message)) or type(exc).__name__
        return _map_error(exc, status, headers, message, kw)


def _map_error(
    exc: openai.APIError,
    status: int | None,
    headers: Mapping[str, str],
    message: str,
    kw: dict[str, Any],
) -> errors.ProviderError:
    if isinstance(exc, openai.APITimeoutError):
        return errors.Timeout(message, **kw)
    if isinstance(exc, openai.APIConnectionError):
        return errors.ConnectionDropped(message, **kw)
    if isinstance(exc, openai.APIResponseValidationError):
        return errors.ServerError(f"response did not match the protocol: {message}", **kw)
    if status == 429:
        return errors.RateLimited(message, retry_after=retry_after(headers), **kw)
    if status in (503, 529):
        return errors.Overloaded(message, retry_after=retry_after(headers), **kw)
    if status == 408:
        return errors.Timeout(message, **kw)
    if status is not None and status >= 500:
        return errors.ServerError(message, **kw)
    if status in (401, 403):
        return errors.AuthError(message, **kw)
    if _error_code(exc) == "context_length_exceeded":
        return errors.ContextExceeded(message, **kw)
    return errors.BadRequest(message, **kw)


def _headers(exc: openai.APIError) -> Mapping[str, str]:
    response = getattr(exc, "response", None)
    return response.headers if response is not None else {}


def _error_code(exc: openai.APIError) -> str | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else None


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
    """vLLM, Ollama, Groq, Together, xAI, Gemini's OpenAI endpoint, …"""

    max_tokens_param = "max_tokens"
