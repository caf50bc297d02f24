"""Mistral chat completions through the official ``mistralai`` SDK.

    provider = MistralProvider(EndpointSettings(name="mistral-eu", base_url=None, ...))
    reply = await provider.complete(request)   # ProviderReply, or raises pipeline.errors.*

Structured output uses ``response_format`` ``json_schema`` with ``strict: true``. The SDK
retries nothing unless given a ``RetryConfig``, and this adapter gives it none: one call
is one HTTP attempt.

The SDK raises its own ``SDKError`` family for HTTP error answers, but lets transport
failures through as raw ``httpx2`` exceptions (timeouts, refused or cut connections); both
are translated here, and nothing above this module sees a ``mistralai`` or ``httpx2`` type.
A successful call returns only the parsed body, so the response headers (rate limits,
request id) are read by an event hook on the adapter's own ``httpx2`` client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import httpx2
from mistralai.client import Mistral, errors, models

from pipeline import errors as docroute_errors
from pipeline.models import Usage
from pipeline.providers.base import ChatRequest, EndpointSettings, ProviderReply
from pipeline.providers.errmap import (
    Fields,
    by_status,
    cap,
    connect_failure,
    mentions_context_overflow,
    protocol_violation,
    server_message,
    transport,
)
from pipeline.providers.headers import mistral_limits
from pipeline.providers.presets import strip_version
from pipeline.secrets import scrub

# Without a key the SDK falls back to MISTRAL_API_KEY or a service-account token file; a
# placeholder keeps a keyless endpoint (the simulator) from ever receiving one.
_KEYLESS = "no-key"
_CUT = frozenset({"length", "model_length"})
# The response headers of the call running in this task (set by ``complete``).
_HEADERS: ContextVar[dict[str, Mapping[str, str]] | None] = ContextVar(
    "docroute_mistral_headers", default=None
)


class MistralProvider:
    """Adapter for the Mistral chat-completions protocol."""

    def __init__(self, settings: EndpointSettings) -> None:
        self.name = settings.name
        key = settings.api_key.get_secret_value() if settings.api_key else _KEYLESS
        self._http = httpx2.AsyncClient(
            follow_redirects=True, event_hooks={"response": [_keep_headers]}
        )
        self._client = Mistral(
            api_key=key,
            server_url=strip_version(settings.base_url),
            async_client=self._http,
            retry_config=None,
            timeout_ms=max(int(settings.timeout_s * 1000), 1),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(self, request: ChatRequest) -> ProviderReply:
        fields = Fields(self.name, request.model)
        box: dict[str, Mapping[str, str]] = {}
        token = _HEADERS.set(box)
        try:
            response = await self._client.chat.complete_async(**_params(request))
        except (errors.MistralError, errors.NoResponseError, httpx2.RequestError) as exc:
            raise _translate(exc, fields) from exc
        finally:
            _HEADERS.reset(token)
        return _reply(response, box.get("headers", {}))


async def _keep_headers(response: httpx2.Response) -> None:
    box = _HEADERS.get()
    if box is not None:
        box["headers"] = response.headers


def _params(request: ChatRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "max_tokens": request.max_output_tokens,
        "response_format": models.ResponseFormat(
            type="json_schema",
            json_schema=models.JSONSchema(
                name=request.schema_name, schema_definition=request.json_schema, strict=True
            ),
        ),
    }
    if request.temperature is not None:
        params["temperature"] = request.temperature
    return params


def _reply(response: models.ChatCompletionResponse, headers: Mapping[str, str]) -> ProviderReply:
    choice = response.choices[0] if response.choices else None
    finish = str(choice.finish_reason) if choice is not None else None
    return ProviderReply(
        text=_text(choice.message.content) if choice and choice.message else None,
        finish_reason="length" if finish in _CUT else finish,
        usage=_usage(response.usage),
        request_id=headers.get("x-request-id") or response.id,
        model_reported=response.model,
        limits=mistral_limits(headers),
    )


def _text(content: Any) -> str | None:
    """The answer's text: a string, or the text of a list of content chunks."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [c.text for c in content if getattr(c, "type", None) == "text"]
        return "".join(texts) if texts else None
    return None  # UNSET: the answer had no content


def _usage(usage: models.UsageInfo | None) -> Usage:
    if usage is None:
        return Usage()
    # Cached prompt tokens are not a field of the SDK's UsageInfo; read them when the
    # server sends OpenAI's ``prompt_tokens_details`` (kept in the model's extras).
    details = (usage.additional_properties or {}).get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cached_input_tokens=cached if isinstance(cached, int) else 0,
    )


def _translate(
    exc: errors.MistralError | errors.NoResponseError | httpx2.RequestError, fields: Fields
) -> docroute_errors.ProviderError:
    if isinstance(exc, httpx2.RequestError):
        refused = connect_failure(exc, exc.request.url)  # "All connection attempts failed"
        message = cap(scrub(refused or str(exc)) or type(exc).__name__)
        return transport(isinstance(exc, httpx2.TimeoutException), message, fields, cause=exc)
    if isinstance(exc, errors.NoResponseError):
        return transport(False, scrub(exc.message) or "no response", fields, cause=exc)
    headers = exc.headers
    fields = Fields(
        fields.provider,
        fields.model,
        http_status=exc.status_code,
        request_id=headers.get("x-request-id"),
        limits=mistral_limits(headers),
    )
    said, code = _said(exc.body)
    message = cap(scrub(said or exc.message) or type(exc).__name__)
    if isinstance(exc, errors.ResponseValidationError) or exc.status_code < 400:
        # A 200 that is not the protocol's body (the SDK's "Unexpected response received").
        return protocol_violation(message, fields)
    return by_status(
        exc.status_code,
        message,
        fields,
        headers=headers,
        context_exceeded=mentions_context_overflow(said, code),
    )


def _said(body: str | None) -> tuple[str | None, str | None]:
    """``(message, code)`` from an error body: ``{"message": …, "code": …}``,
    ``{"error": {"message": …}}``, a 422's ``{"detail": [{"msg": …}, …]}``, or any other
    shape or plain text (``server_message``)."""
    try:
        data = json.loads(body or "")
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    inner: dict[str, Any] = error if isinstance(error, dict) else data or {}
    code = inner.get("code") if isinstance(inner, dict) else None
    return server_message(body), str(code) if code is not None else None
