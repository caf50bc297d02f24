"""The OpenAI chat-completions wire: reading requests, writing answers, errors and headers.

Shapes follow the SDK's own types (``openai.types.chat.ChatCompletion``,
``openai.types.completion_usage.CompletionUsage``) and the error bodies the API sends:

    >>> call = parse_chat_request(b'{"model":"m", "messages": [{"role": "user", "content": "Hi"}]}')
    >>> call.model, call.first_user_text, call.is_repair, call.schema
    ('m', 'Hi', False, None)
    >>> error_body("Nope.", "invalid_request_error")
    {'error': {'message': 'Nope.', 'type': 'invalid_request_error', 'param': None, 'code': None}}
    >>> duration(0.02), duration(1), duration(360), duration(3723.5)
    ('20ms', '1s', '6m0s', '1h2m3.5s')

``parse_chat_request`` also reads Mistral's and Gemini's requests (the same JSON), and
``OpenAIWire`` is the base of ``GeminiWire``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
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
    digest_of,
    first_user_text,
    retry_after_value,
)

_ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
OVERLOADED = "The server is overloaded or not ready yet."


class OpenAIWire:
    """``POST /v1/chat/completions``, ``Authorization: Bearer``, ``x-ratelimit-*`` headers."""

    path = "/v1/chat/completions"
    base_path = "/v1"

    def parse(self, raw: bytes) -> ChatCall:
        return parse_chat_request(raw)

    def presented_key(self, headers: Mapping[str, str]) -> str:
        return bearer_token(headers)

    def success(self, call: ChatCall, answer: Answer, digest: str) -> dict[str, Any]:
        refused = answer.finish == "refusal"
        return {
            "id": "chatcmpl-" + digest[:29],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None if refused else answer.text,
                        "refusal": answer.text if refused else None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "length" if answer.finish == "length" else "stop",
                }
            ],
            "usage": usage(call.prompt_tokens, answer.completion_tokens),
            "service_tier": "default",
            "system_fingerprint": fingerprint(call.model),
        }

    def error(self, problem: Problem) -> tuple[int, Any]:
        kind = problem.kind
        if kind == "rate_limited":
            return 429, rate_limit_body(problem)
        if kind == "server_error":
            return 500, error_body(problem.message or SERVER_ERROR, "server_error")
        if kind == "overloaded":
            return 503, error_body(OVERLOADED, "server_error")
        if kind == "auth":
            return 401, auth_error_body(problem.shown_key)
        if kind == "not_found":
            return 404, error_body(problem.message, "invalid_request_error")
        return 400, error_body(
            problem.message, "invalid_request_error", problem.param, problem.code
        )

    def headers(
        self, digest: str, quota: QuotaView | None, retry_after_s: float | None
    ) -> dict[str, str]:
        headers = {"x-request-id": "req_" + digest[29:61]}
        if quota is not None:
            headers.update(quota_headers(quota))
        if retry_after_s is not None:
            headers["retry-after"] = retry_after_value(retry_after_s)
            headers["retry-after-ms"] = str(round(retry_after_s * 1000))
        return headers


# -- requests ------------------------------------------------------------------------------


def parse_chat_request(raw: bytes, overhead: tokens.Overhead | None = None) -> ChatCall:
    """Read and check a chat-completions body; raise ``BadRequest`` as the API would.

    The prompt bills the messages, the response format and the tools with ``overhead``
    (OpenAI's unless given; see ``tokens``)."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest(_BAD_JSON) from None
    if not isinstance(body, dict):
        raise BadRequest(_BAD_JSON)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter")
    messages = _messages(body.get("messages"))
    _check_unsupported(body)
    fmt = body.get("response_format")
    schema, json_mode = _response_format(fmt)
    if schema is None and body.get("guided_json") is not None:  # vLLM's own field
        schema = _compile(body["guided_json"], "guided_json")
    if schema is None:  # a model that follows a schema written into its prompt
        schema = _prompted_schema(messages)
    return ChatCall(
        model=model,
        first_user_text=first_user_text(messages),
        is_repair=any(m["role"] == "assistant" for m in messages),
        schema=schema,
        json_mode=json_mode,
        max_tokens=_max_tokens(body),
        prompt_tokens=tokens.prompt_tokens(messages)
        + structure_tokens(body, overhead or tokens.OVERHEADS["openai"]),
        response_format=str(fmt.get("type")) if isinstance(fmt, dict) else None,
    )


#: How a prompt introduces a JSON Schema for the answer (``structured.SCHEMA_PROMPT_HEAD``
#: among others): the first JSON object after it is taken as the schema.
_SCHEMA_IN_PROMPT = re.compile(r"JSON Schema:\s*", re.IGNORECASE)


def _prompted_schema(messages: list[dict[str, Any]]) -> CompiledSchema | None:
    """The schema a system message spells out, for answers that follow it (else None)."""
    for m in messages:
        content = m.get("content")
        if m["role"] != "system" or not isinstance(content, str):
            continue
        found = _SCHEMA_IN_PROMPT.search(content)
        if found is None:
            continue
        try:
            value, _ = json.JSONDecoder().raw_decode(content, found.end())
        except ValueError:
            return None
        return _compile(value, "messages") if isinstance(value, dict) else None
    return None


def structure_tokens(body: dict[str, Any], overhead: tokens.Overhead) -> int:
    """What a json_schema response format and tool definitions add to the prompt.

    >>> fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}}
    >>> structure_tokens({"response_format": fmt}, tokens.OVERHEADS["openai"])  # 16 + 32
    48
    """
    total = 0
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and (fmt.get("type") == "json_schema" or "schema" in fmt):
        total += tokens.json_tokens(fmt) + overhead.format_prompt
    if body.get("guided_json") is not None:
        total += tokens.json_tokens(body["guided_json"]) + overhead.format_prompt
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        total += sum(tokens.json_tokens(tool) + overhead.per_tool for tool in tools)
        if body.get("tool_choice") is not None:
            total += tokens.json_tokens(body["tool_choice"])
    return total


def _messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        raise BadRequest(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(value, list):
        raise BadRequest(
            "Invalid type for 'messages': expected an array.", "messages", "invalid_type"
        )
    if not value:
        raise BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise BadRequest(
                f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role", "invalid_value"
            )
    return value


def _check_unsupported(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise BadRequest(
            "The simulator does not support stream=true.", "stream", "unsupported_value"
        )
    if body.get("n", 1) != 1:
        raise BadRequest("The simulator only answers n=1.", "n", "unsupported_value")


def _response_format(value: Any) -> tuple[CompiledSchema | None, bool]:
    """(compiled schema, json mode) of ``response_format``."""
    if value is None:
        return None, False
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None, False
    if kind == "json_object":  # llama-cpp-python's server also takes a schema here
        schema = value.get("schema")
        return (_compile(schema, "response_format.schema") if schema else None), True
    if kind != "json_schema":
        raise BadRequest(
            f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object', and "
            "'json_schema'.",
            "response_format.type",
            "invalid_value",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadRequest(
            "Missing required parameter: 'response_format.json_schema'.",
            "response_format.json_schema",
            "missing_required_parameter",
        )
    return _compile(spec.get("schema", {}), "response_format", spec["name"]), False


def _compile(schema: Any, param: str, name: str | None = None) -> CompiledSchema:
    try:
        return compiled_schema(schema)
    except SchemaError as exc:
        named = f" for response_format '{name}'" if name else f" in {param}"
        raise BadRequest(f"Invalid schema{named}: {exc}", param, "invalid_json_schema") from None


def _max_tokens(body: dict[str, Any]) -> int | None:
    for param in ("max_completion_tokens", "max_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(
                f"Invalid type for '{param}': expected an integer.", param, "invalid_type"
            )
        if value < 1:
            raise BadRequest(
                f"Invalid '{param}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                param,
                "integer_below_min_value",
            )
        return value
    return None


# -- answers and errors --------------------------------------------------------------------


def usage(prompt: int, completion: int) -> dict[str, Any]:
    """``CompletionUsage`` with the detail objects the API sends."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def fingerprint(model: str) -> str:
    """A stable ``fp_…`` per model, like the API's ``system_fingerprint``."""
    return "fp_" + digest_of(model)[:10]


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The API's error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def rate_limit_body(problem: Problem) -> dict[str, Any]:
    """OpenAI's 429: which limit, its numbers, when to retry (``type`` names the limit)."""
    what = problem.exceeded or "requests"
    unit = "requests per min (RPM)" if what == "requests" else "tokens per min (TPM)"
    where = f"for {problem.model} in organization org-simulator on {unit}"
    limit, used, requested = problem.limit, problem.used, problem.requested
    if limit is None:  # injected: the numbers of a typical small tier
        limit, used, requested = 60, 60, 1
    if what == "tokens" and requested is not None and requested > limit:
        message = (
            f"Request too large {where}: Limit {limit}, Requested {requested}. The input or "
            "output tokens must be reduced in order to run successfully. Visit "
            "https://platform.openai.com/account/rate-limits to learn more."
        )
    else:
        message = (
            f"Rate limit reached {where}: Limit {limit}, Used {used}, Requested {requested}. "
            f"Please try again in {duration(problem.retry_after_s)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
    return error_body(message, what, None, "rate_limit_exceeded")


def auth_error_body(shown_key: str | None) -> dict[str, Any]:
    """The 401 body; quotes the key as the app shows it (masked, or in full if echoed)."""
    if not shown_key:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        return error_body(message, "invalid_request_error")
    message = (
        f"Incorrect API key provided: {shown_key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return error_body(message, "invalid_request_error", None, "invalid_api_key")


# -- headers -------------------------------------------------------------------------------


def quota_headers(quota: QuotaView) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets as ``duration``."""
    headers: dict[str, str] = {}
    for what, limit, remaining, reset in (
        ("requests", quota.limit_requests, quota.remaining_requests, quota.reset_requests_s),
        ("tokens", quota.limit_tokens, quota.remaining_tokens, quota.reset_tokens_s),
    ):
        if limit is not None:
            headers[f"x-ratelimit-limit-{what}"] = str(limit)
            headers[f"x-ratelimit-remaining-{what}"] = str(remaining)
            headers[f"x-ratelimit-reset-{what}"] = duration(reset or 0.0)
    return headers


def duration(seconds: float) -> str:
    """OpenAI's duration format: ``20ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    ms = max(round(seconds * 1000), 0)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return text + f"{rest / 1000:g}s"
