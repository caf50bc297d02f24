"""Gemini's OpenAI-compatible endpoint: OpenAI's requests and answers, Google's error bodies.

Errors come as a JSON array holding one Google RPC error, which the openai SDK still
classifies by HTTP status (a 429 is ``openai.RateLimitError``):

    >>> GeminiWire().error(Problem("rate_limited"))[1][0]["error"]["status"]
    'RESOURCE_EXHAUSTED'
"""

from __future__ import annotations

import time
from typing import Any

from .wire import Answer, ChatCall, Problem
from .wire_openai import OpenAIWire

#: HTTP status and google.rpc status of each error kind, with the message Gemini sends.
_ERRORS: dict[str, tuple[int, str, str]] = {
    "rate_limited": (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    ),
    "server_error": (
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    "overloaded": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "auth": (401, "UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    "not_found": (404, "NOT_FOUND", ""),
    "bad_request": (400, "INVALID_ARGUMENT", ""),
}


class GeminiWire(OpenAIWire):
    """OpenAI's wire with Gemini's leaner answers and ``[{"error": {...}}]`` error bodies."""

    def success(self, call: ChatCall, answer: Answer, digest: str) -> dict[str, Any]:
        # Gemini has no refusal field: a refusal is just text.
        prompt, completion = call.prompt_tokens, answer.completion_tokens
        return {
            "id": digest[:27],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
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
        status, rpc_status, message = _ERRORS[problem.kind]
        body = {"code": status, "message": message or problem.message, "status": rpc_status}
        return status, [{"error": body}]
