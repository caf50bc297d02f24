"""The OpenAI chat-completions wire format: reading requests, writing answers and errors.

Shapes follow the SDK's own types (``openai.types.chat.ChatCompletion``,
``openai.types.completion_usage.CompletionUsage``) and the error bodies the API sends:

    >>> call = parse_chat_request(b'{"model":"m", "messages": [{"role": "user", "content": "Hi"}]}')
    >>> call.model, call.first_user_text, call.is_repair, call.schema
    ('m', 'Hi', False, None)
    >>> error_body("Nope.", "invalid_request_error")
    {'error': {'message': 'Nope.', 'type': 'invalid_request_error', 'param': None, 'code': None}}
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from . import tokens
from .schema_gen import CompiledSchema, SchemaError, compiled_schema

_ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


class BadRequest(Exception):
    """A request the API would refuse with 400; carries the fields of the error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, "invalid_request_error", self.param, self.code)


@dataclass(frozen=True, slots=True)
class ChatCall:
    """What the simulator needs from a chat-completions request."""

    model: str
    messages: list[dict[str, Any]]
    first_user_text: str
    is_repair: bool
    schema: CompiledSchema | None
    json_mode: bool
    max_tokens: int | None
    prompt_tokens: int


def parse_chat_request(raw: bytes) -> ChatCall:
    """Read and check a request body; raise ``BadRequest`` as the API would."""
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
    schema, json_mode = _response_format(body.get("response_format"))
    return ChatCall(
        model=model,
        messages=messages,
        first_user_text=first_user_text(messages),
        is_repair=any(m["role"] == "assistant" for m in messages),
        schema=schema,
        json_mode=json_mode,
        max_tokens=_max_tokens(body),
        prompt_tokens=tokens.prompt_tokens(messages),
    )


def partial_call_fields(raw: bytes) -> tuple[str, str]:
    """(model, first user text) of a body that may be malformed, for the request log."""
    try:
        body = json.loads(raw)
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        model = body.get("model")
        return (model if isinstance(model, str) else ""), first_user_text(messages)
    except (ValueError, AttributeError, TypeError):
        return "", ""


def first_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the first user message ('' if there is none)."""
    for message in messages:
        if message.get("role") == "user":
            return tokens.message_text(message)
    return ""


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
    if kind == "json_object":
        return None, True
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
    try:
        return compiled_schema(spec.get("schema", {})), False
    except SchemaError as exc:
        raise BadRequest(
            f"Invalid schema for response_format '{spec['name']}': {exc}",
            "response_format",
            "invalid_json_schema",
        ) from None


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


# -- answers -------------------------------------------------------------------------------


def request_ids(seed: str) -> tuple[str, str]:
    """(completion id, request id), derived from ``seed`` so a rerun gets the same ids."""
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()
    return "chatcmpl-" + digest[:29], "req_" + digest[29:61]


def completion_body(
    call: ChatCall, completion_id: str, content: str, finish_reason: str, usage: tuple[int, int]
) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice, as the API returns it."""
    prompt, completion = usage
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
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
        },
        "service_tier": "default",
        "system_fingerprint": fingerprint(call.model),
    }


def fingerprint(model: str) -> str:
    """A stable ``fp_…`` per model, like the API's ``system_fingerprint``."""
    return "fp_" + hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:10]


# -- errors --------------------------------------------------------------------------------


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The API's error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def rate_limit_body(model: str, retry_after_s: float) -> dict[str, Any]:
    message = (
        f"Rate limit reached for {model} in organization org-simulator on requests per min "
        f"(RPM): Limit 60, Used 60, Requested 1. Please try again in {retry_after_s:g}s. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    return error_body(message, "requests", None, "rate_limit_exceeded")


def retry_after_headers(retry_after_s: float) -> dict[str, str]:
    """``retry-after`` (seconds) and ``retry-after-ms``, as OpenAI sends on a 429."""
    return {"retry-after": f"{retry_after_s:g}", "retry-after-ms": str(round(retry_after_s * 1000))}


def server_error_body() -> dict[str, Any]:
    return error_body(SERVER_ERROR, "server_error")


def auth_error_body(presented: str | None, *, echo_key: bool) -> dict[str, Any]:
    """The 401 body; quotes the key masked (``sk-ab****wxyz``), or in full if ``echo_key``."""
    if not presented:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        return error_body(message, "invalid_request_error")
    shown = presented if echo_key else mask_key(presented)
    message = (
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return error_body(message, "invalid_request_error", None, "invalid_api_key")


def mask_key(key: str) -> str:
    """``sk-abcdefghwxyz`` → ``sk-ab****wxyz``; keys under 12 characters show nothing.

    >>> mask_key("sk-abcdefghwxyz"), mask_key("sk-short")
    ('sk-ab****wxyz', '****')
    """
    return f"{key[:5]}****{key[-4:]}" if len(key) >= 12 else "****"


def not_found_body(method: str, path: str) -> dict[str, Any]:
    return error_body(f"Invalid URL ({method} {path})", "invalid_request_error")
