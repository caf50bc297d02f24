"""The Mistral chat-completions wire: OpenAI-like requests, Mistral's answers and errors.

Answers match ``mistralai.client.models.ChatCompletionResponse`` (which the SDK always
validates); errors are Mistral's ``{"object": "error", "message", "type", "param", "code"}``,
which the SDK raises as ``mistralai.client.errors.SDKError`` with the status code:

    >>> status, body = MistralWire().error(Problem("rate_limited"))
    >>> status, body["object"], body["type"]
    (429, 'error', 'rate_limited')

Rate-limit headers: the ``x-ratelimit-*`` family (as OpenAI), plus the
``ratelimitbysize-*`` / ``x-ratelimitbysize-*-minute`` token headers Mistral's gateway sends.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import tokens
from .state import QuotaView
from .wire import Answer, ChatCall, Problem, bearer_token, retry_after_value
from .wire_openai import parse_chat_request
from .wire_openai import quota_headers as openai_quota_headers

#: HTTP status, error type and message of each error kind ('' = the problem's message).
_ERRORS: dict[str, tuple[int, str, str]] = {
    "rate_limited": (429, "rate_limited", "Requests rate limit exceeded"),
    "server_error": (500, "internal_server_error", "Internal server error"),
    "overloaded": (503, "service_unavailable", "Service unavailable, please retry later"),
    "auth": (401, "unauthorized", "Unauthorized"),
    "not_found": (404, "not_found", ""),
    "bad_request": (400, "invalid_request_error", ""),
}


class MistralWire:
    """``POST /v1/chat/completions`` the Mistral way; base URL without ``/v1``."""

    path = "/v1/chat/completions"
    base_path = ""

    def parse(self, raw: bytes) -> ChatCall:
        return parse_chat_request(raw, tokens.OVERHEADS["mistral"])

    def presented_key(self, headers: Mapping[str, str]) -> str:
        return bearer_token(headers)

    def success(self, call: ChatCall, answer: Answer, digest: str) -> dict[str, Any]:
        prompt, completion = call.prompt_tokens, answer.completion_tokens
        return {
            "id": digest[:32],
            "object": "chat.completion",
            "model": call.model,
            "created": int(time.time()),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": answer.text,
                        "tool_calls": None,
                        "prefix": False,
                    },
                    "finish_reason": "length" if answer.finish == "length" else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    def error(self, problem: Problem) -> tuple[int, Any]:
        status, type_, message = _ERRORS[problem.kind]
        if problem.kind == "rate_limited" and problem.exceeded == "tokens":
            message = "Tokens rate limit exceeded"
        if problem.kind == "auth" and problem.key_echoed:
            message = f"Unauthorized: invalid API key {problem.shown_key}"
        return status, {
            "object": "error",
            "message": message or problem.message,
            "type": type_,
            "param": problem.param,
            "code": problem.code,
        }

    def headers(
        self, digest: str, quota: QuotaView | None, retry_after_s: float | None
    ) -> dict[str, str]:
        request_id = digest[32:64]
        headers = {"x-request-id": request_id, "mistral-correlation-id": request_id}
        if quota is not None:
            headers.update(openai_quota_headers(quota))
            headers.update(_by_size_headers(quota))
        if retry_after_s is not None:
            headers["retry-after"] = retry_after_value(retry_after_s)
        return headers


def _by_size_headers(quota: QuotaView) -> dict[str, str]:
    """Mistral's token-quota headers: limit, remaining, whole seconds to the reset."""
    if quota.limit_tokens is None:
        return {}
    limit, remaining = str(quota.limit_tokens), str(quota.remaining_tokens)
    return {
        "ratelimitbysize-limit": limit,
        "ratelimitbysize-remaining": remaining,
        "ratelimitbysize-reset": retry_after_value(quota.reset_tokens_s or 0.0),
        "x-ratelimitbysize-limit-minute": limit,
        "x-ratelimitbysize-remaining-minute": remaining,
    }
