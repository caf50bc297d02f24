"""The Anthropic Messages wire (``POST /v1/messages``): requests, answers, errors, headers.

Shapes follow the SDK's own types (``anthropic.types.Message``, ``Usage``, ``TextBlock``,
``ToolUseBlock``) and the API's error envelope
``{"type": "error", "error": {"type": …, "message": …}}``. Structured output comes either
from ``output_config.format`` (a ``json_schema``; the answer is a text block of JSON) or
from a forced tool (``tool_choice`` ``{"type": "tool", "name": …}`` or ``{"type": "any"}``;
the answer is a ``tool_use`` block whose ``input`` fits the tool's ``input_schema``):

    >>> call = AnthropicWire().parse(b'{"model": "claude-x", "max_tokens": 64, '
    ...     b'"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]}')
    >>> call.max_tokens, call.prompt_tokens, call.tool_name   # the system prompt counts
    (64, 15, None)
    >>> AnthropicWire().error(Problem("overloaded"))
    (529, {'type': 'error', 'error': {'type': 'overloaded_error', 'message': 'Overloaded'}})
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from . import tokens
from .schema_gen import CompiledSchema, SchemaError, compiled_schema
from .state import QuotaView
from .wire import (
    Answer,
    BadRequest,
    ChatCall,
    Problem,
    bearer_token,
    first_user_text,
    retry_after_value,
)

_ROLES = frozenset(("user", "assistant"))
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "refusal": "refusal"}
#: HTTP status, error type and message of each error kind ('' = the problem's message).
_ERRORS: dict[str, tuple[int, str, str]] = {
    "rate_limited": (429, "rate_limit_error", ""),
    "server_error": (500, "api_error", "Internal server error"),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "not_found": (404, "not_found_error", ""),
    "bad_request": (400, "invalid_request_error", ""),
}


class AnthropicWire:
    """``POST /v1/messages``, ``x-api-key``, ``anthropic-ratelimit-*`` headers, 529 overload."""

    path = "/v1/messages"
    base_path = ""

    def parse(self, raw: bytes) -> ChatCall:
        return parse_messages_request(raw)

    def presented_key(self, headers: Mapping[str, str]) -> str:
        # The API reads x-api-key; anthropic 2.x sends an api_key as a Bearer token instead.
        return headers.get("x-api-key") or bearer_token(headers)

    def success(self, call: ChatCall, answer: Answer, digest: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": "msg_01" + digest[:22],
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": [_block(call, answer, digest)],
            "stop_reason": _stop_reason(call, answer),
            "stop_sequence": None,
            "usage": {
                "input_tokens": call.prompt_tokens,
                "output_tokens": answer.completion_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "server_tool_use": None,
                "service_tier": "standard",
            },
        }
        if answer.finish == "refusal":
            message["stop_details"] = {"type": "refusal", "category": None, "explanation": None}
        return message

    def error(self, problem: Problem) -> tuple[int, Any]:
        status, type_, message = _ERRORS[problem.kind]
        if problem.kind == "rate_limited":
            message = _rate_limit_message(problem)
        elif problem.kind == "auth" and problem.shown_key is None:
            message = "x-api-key header is required"
        elif problem.kind == "auth" and problem.key_echoed:
            message = f"invalid x-api-key: {problem.shown_key}"  # a careless provider
        error = {"type": type_, "message": message or problem.message}
        return status, {"type": "error", "error": error}

    def headers(
        self, digest: str, quota: QuotaView | None, retry_after_s: float | None
    ) -> dict[str, str]:
        headers = {"request-id": "req_01" + digest[22:46]}
        if quota is not None:
            headers.update(quota_headers(quota))
        if retry_after_s is not None:
            headers["retry-after"] = retry_after_value(retry_after_s)
        return headers


# -- requests ------------------------------------------------------------------------------


def parse_messages_request(raw: bytes) -> ChatCall:
    """Read and check a Messages body; raise ``BadRequest`` as the API would."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("There was an error parsing the body of your request.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body of your request must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    max_tokens = _max_tokens(body.get("max_tokens"))
    messages = _messages(body.get("messages"))
    if body.get("stream"):
        raise BadRequest("stream: The simulator does not support stream=true.")
    system = _system(body.get("system"))
    tool_name, tool_schema = _forced_tool(body.get("tools"), body.get("tool_choice"))
    schema = tool_schema or _output_format(body.get("output_config"))
    counted = [{"role": "system", "content": system}, *messages] if system else messages
    return ChatCall(
        model=model,
        first_user_text=first_user_text(messages),
        is_repair=any(m["role"] == "assistant" for m in messages),
        schema=schema,
        json_mode=False,
        max_tokens=max_tokens,
        prompt_tokens=tokens.prompt_tokens(counted) + structure_tokens(body),
        tool_name=tool_name,
    )


def structure_tokens(body: dict[str, Any]) -> int:
    """What tools (with the tool-use system prompt) and a response format add to the prompt.

    >>> tools = [{"name": "t", "input_schema": {}}]
    >>> structure_tokens({"tools": tools, "tool_choice": {"type": "any"}})  # 8 + 4 + 340
    352
    """
    overhead = tokens.OVERHEADS["anthropic"]
    total = 0
    tools, choice = body.get("tools"), body.get("tool_choice")
    if isinstance(tools, list) and tools:
        forced = isinstance(choice, dict) and choice.get("type") in ("any", "tool")
        total += tokens.json_tokens(tools) + (tokens.json_tokens(choice) if choice else 0)
        total += overhead.tool_prompt if forced else overhead.tool_prompt_auto
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if isinstance(fmt, dict):
        total += tokens.json_tokens(fmt) + overhead.format_prompt
    return total


def _max_tokens(value: Any) -> int:
    if value is None:
        raise BadRequest("max_tokens: Field required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest("max_tokens: Input should be a valid integer")
    if value < 1:
        raise BadRequest("max_tokens: Input should be greater than or equal to 1")
    return value


def _messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        raise BadRequest("messages: Field required")
    if not isinstance(value, list):
        raise BadRequest("messages: Input should be a valid list")
    if not value:
        raise BadRequest("messages: at least one message is required")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if not isinstance(message.get("content"), str | list):
            raise BadRequest(f"messages.{i}.content: Field required")
    return value


def _system(value: Any) -> str | list[Any] | None:
    if value is None or isinstance(value, str | list):
        return value
    raise BadRequest("system: Input should be a valid string or a list of text blocks")


def _forced_tool(tools: Any, choice: Any) -> tuple[str | None, CompiledSchema | None]:
    """(name, input schema) of the tool ``tool_choice`` forces, or (None, None)."""
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("tool", "any"):
        return None, None
    if not isinstance(tools, list) or not tools:
        raise BadRequest("tool_choice: tools must be provided when tool_choice is set")
    wanted = choice.get("name") if kind == "tool" else None
    for tool in tools:
        if isinstance(tool, dict) and (wanted is None or tool.get("name") == wanted):
            return str(tool.get("name")), _compile(tool.get("input_schema"), "tools.input_schema")
    raise BadRequest(f"tool_choice.name: tool {wanted!r} was not found in tools")


def _output_format(config: Any) -> CompiledSchema | None:
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise BadRequest("output_config.format.type: Input should be 'json_schema'")
    return _compile(fmt.get("schema"), "output_config.format.schema")


def _compile(schema: Any, where: str) -> CompiledSchema:
    try:
        return compiled_schema(schema)
    except SchemaError as exc:
        raise BadRequest(f"{where}: {exc}") from None


# -- answers, errors, headers --------------------------------------------------------------


def _block(call: ChatCall, answer: Answer, digest: str) -> dict[str, Any]:
    if call.tool_name is None or answer.finish == "refusal":
        return {"type": "text", "text": answer.text}
    return {
        "type": "tool_use",
        "id": "toolu_01" + digest[40:62],
        "name": call.tool_name,
        "input": answer.tool_input or {},
    }


def _stop_reason(call: ChatCall, answer: Answer) -> str:
    if answer.finish == "stop" and call.tool_name is not None:
        return "tool_use"
    return _STOP_REASONS[answer.finish]


def _rate_limit_message(problem: Problem) -> str:
    limit = problem.limit if problem.limit is not None else 50
    unit = "input tokens" if problem.exceeded == "tokens" else "requests"
    return (
        f"This request would exceed the rate limit for your organization of {limit} {unit} "
        "per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You "
        "can see the response headers for current usage. Please reduce the prompt length or "
        "the maximum tokens requested, or try again later."
    )


def quota_headers(quota: QuotaView) -> dict[str, str]:
    """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``; resets in RFC 3339."""
    headers: dict[str, str] = {}
    now = time.time()
    for what, limit, remaining, reset in (
        ("requests", quota.limit_requests, quota.remaining_requests, quota.reset_requests_s),
        ("tokens", quota.limit_tokens, quota.remaining_tokens, quota.reset_tokens_s),
    ):
        if limit is not None:
            headers[f"anthropic-ratelimit-{what}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{what}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{what}-reset"] = rfc3339(now + (reset or 0.0))
    return headers


def rfc3339(epoch_s: float) -> str:
    """A UTC time in whole seconds, rounded up: ``2025-06-01T12:00:30Z``.

    >>> rfc3339(0.2)
    '1970-01-01T00:00:01Z'
    """
    return datetime.fromtimestamp(math.ceil(epoch_s), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
