"""Anthropic Messages through the official ``anthropic`` SDK.

    provider = AnthropicProvider(EndpointSettings(name="claude-eu", base_url=None, ...))
    reply = await provider.complete(request)   # ProviderReply, or raises pipeline.errors.*

Structured output takes one of two shapes, chosen per model (``structured_mode``):
``json_schema`` asks for ``output_config.format`` with the schema passed through the SDK's
``transform_schema`` (the API refuses some JSON-schema keywords; the SDK folds them into
descriptions, and pydantic still enforces them afterwards); ``tool`` forces a call of one
tool whose ``input_schema`` is the schema, and the tool's input is the answer.

The SDK's retries are off (``max_retries=0``): one call is one HTTP attempt. Usage is
normalised to docroute's convention, where ``input_tokens`` is the whole prompt: Anthropic
reports fresh, cache-read and cache-write input tokens separately. Every SDK exception is
translated here; nothing above this module sees an ``anthropic`` type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anthropic
from anthropic import AsyncAnthropic, DefaultAioHttpClient, transform_schema

from pipeline import errors
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
    timed_out,
    transport,
)
from pipeline.providers.headers import anthropic_limits
from pipeline.providers.presets import strip_version
from pipeline.secrets import scrub

# Without a key the SDK would look for one in the environment and in profile files on
# disk; a placeholder keeps a keyless endpoint (the simulator) from ever receiving one.
_KEYLESS = "no-key"
# Stop reasons after which the answer is cut short: the budget of output tokens, or the
# model's context window, ran out.
_CUT = frozenset({"max_tokens", "model_context_window_exceeded"})


class AnthropicProvider:
    """Adapter for the Anthropic Messages protocol."""

    def __init__(self, settings: EndpointSettings) -> None:
        self.name = settings.name
        key = settings.api_key.get_secret_value() if settings.api_key else _KEYLESS
        self._client = AsyncAnthropic(
            api_key=key,
            base_url=strip_version(settings.base_url),
            max_retries=0,
            timeout=settings.timeout_s,
            http_client=DefaultAioHttpClient(),  # the SDK's faster async transport
            _strict_response_validation=settings.strict_validation,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, request: ChatRequest) -> ProviderReply:
        fields = Fields(self.name, request.model)
        try:
            raw = await self._client.messages.with_raw_response.create(**_params(request))
            message = await raw.parse()
        except anthropic.AnthropicError as exc:
            raise _translate(exc, fields) from exc
        except ValueError as exc:  # a 200 whose body is not JSON
            raise protocol_violation(scrub(str(exc)) or type(exc).__name__, fields) from exc
        return _reply(message, request, raw.headers)


def _params(request: ChatRequest) -> dict[str, Any]:
    # The SDK's ``create`` has no temperature parameter (2.x): ``request.temperature`` is
    # not sent.
    system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "messages": _turns(request.messages),
    }
    if system:
        params["system"] = system
    if request.structured_mode == "tool":
        params["tools"] = [
            {
                "name": request.schema_name,
                "description": f"Record the answer as a {request.schema_name} object.",
                "input_schema": request.json_schema,
            }
        ]
        params["tool_choice"] = {"type": "tool", "name": request.schema_name}
    else:
        schema = transform_schema(request.json_schema)
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    return params


def _turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    # The API refuses empty turns; a repair prompt echoes an empty answer as one. Dropping
    # it leaves two user turns in a row, which the API merges.
    return [
        {"role": m["role"], "content": m["content"]}
        for m in messages
        if m["role"] != "system" and m["content"].strip()
    ]


def _reply(message: Any, request: ChatRequest, headers: Mapping[str, str]) -> ProviderReply:
    stop = message.stop_reason
    return ProviderReply(
        text=_answer(message.content, request),
        finish_reason="length" if stop in _CUT else stop,
        refusal=_refusal(message) if stop == "refusal" else None,
        usage=normalise_usage(message.usage),
        request_id=headers.get("request-id") or message.id,
        model_reported=message.model,
        limits=anthropic_limits(headers),
    )


def _answer(blocks: list[Any], request: ChatRequest) -> str | None:
    """The forced tool's input as JSON text in ``tool`` mode, else the text blocks."""
    if request.structured_mode == "tool":
        for block in blocks:
            if block.type == "tool_use" and block.name == request.schema_name:
                return json.dumps(block.input, ensure_ascii=False)
    texts = [block.text for block in blocks if block.type == "text"]
    return "".join(texts) if texts else None


def _refusal(message: Any) -> str:
    details = message.stop_details
    if details is not None and details.explanation:
        return str(details.explanation)
    said = "".join(b.text for b in message.content if b.type == "text").strip()
    if said:
        return said
    category = details.category if details is not None else None
    return f"the model refused ({category})" if category else "the model refused"


def normalise_usage(usage: Any) -> Usage:
    """Anthropic counts fresh, cache-read and cache-write input apart; docroute's
    ``input_tokens`` is their sum."""
    if usage is None:
        return Usage()
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    return Usage(
        input_tokens=(usage.input_tokens or 0) + read + written,
        output_tokens=usage.output_tokens or 0,
        cached_input_tokens=read,
        cache_write_tokens=written,
    )


def _translate(exc: anthropic.AnthropicError, fields: Fields) -> errors.ProviderError:
    if isinstance(exc, anthropic.APIConnectionError):
        # "Connection error." / "Request timed out." say less than the OS's reason.
        message = scrub(connect_failure(exc, exc.request.url)) or _message(exc)
        # APITimeoutError is an APIConnectionError; aiohttp's errors are not all timeouts.
        late = isinstance(exc, anthropic.APITimeoutError) and timed_out(exc)
        return transport(late, message, fields, cause=exc)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return protocol_violation(_message(exc), _with_response(fields, exc))
    if isinstance(exc, anthropic.APIStatusError):
        message = _message(exc)
        return by_status(
            exc.status_code,
            message,
            _with_response(fields, exc),
            headers=exc.response.headers,
            context_exceeded=mentions_context_overflow(message, exc.error_code),
        )
    # Not an HTTP exchange (credentials, client misuse): this endpoint cannot serve it.
    return fields.error(errors.BadRequest, _message(exc))


def _with_response(
    fields: Fields, exc: anthropic.APIStatusError | anthropic.APIResponseValidationError
) -> Fields:
    headers = exc.response.headers
    return Fields(
        fields.provider,
        fields.model,
        http_status=exc.status_code,
        request_id=headers.get("request-id"),
        limits=anthropic_limits(headers),
    )


def _message(exc: anthropic.AnthropicError) -> str:
    """The API's own words when it sent some (``error.message``, or whatever another
    server's body says: ``server_message``), else the SDK's."""
    said = getattr(exc, "api_message", None)
    if not said and isinstance(exc, anthropic.APIStatusError):
        said = server_message(exc.body)
    said = said or getattr(exc, "message", None) or str(exc)
    return cap(scrub(str(said)) or type(exc).__name__)
