"""What every wire protocol module provides, and the protocol-neutral values they exchange.

The app reads a request with ``Wire.parse`` into a ``ChatCall``, decides the fault, and has
the same ``Wire`` write the answer (``success``), the refusal (``error``) and the headers
(``headers``). One module per protocol implements it (``wire_openai``, ``wire_gemini``,
``wire_anthropic``, ``wire_mistral``), listed in ``protocols.WIRES``:

    >>> from pipeline.simulator.protocols import WIRES
    >>> call = WIRES["anthropic"].parse(
    ...     b'{"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]}')
    >>> call.model, call.first_user_text, call.max_tokens, call.prompt_tokens
    ('m', 'Hi', 9, 8)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from . import tokens
from .schema_gen import CompiledSchema
from .state import QuotaView

#: The error answers a wire can give, by cause.
ErrorKind = Literal[
    "rate_limited", "server_error", "overloaded", "auth", "bad_request", "not_found"
]
#: How an answer ended: normally, cut by the token limit, or refused by the model.
Finish = Literal["stop", "length", "refusal"]

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


class BadRequest(Exception):
    """A request the API would refuse with 400; carries the fields of the error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def problem(self, model: str = "") -> Problem:
        return Problem("bad_request", self.message, model, param=self.param, code=self.code)


@dataclass(frozen=True, slots=True)
class ChatCall:
    """What the simulator needs from a request, whatever the protocol.

    ``tool_name`` is set when the request forces a call of that tool (anthropic's
    ``tool_choice``): the answer is then the tool's input, an object fitting ``schema``.
    """

    model: str
    first_user_text: str
    is_repair: bool
    schema: CompiledSchema | None
    json_mode: bool
    max_tokens: int | None
    prompt_tokens: int
    tool_name: str | None = None
    response_format: str | None = None  # the ``response_format.type`` sent, if any

    @property
    def cost(self) -> int:
        """Tokens the request counts against a TPM quota: prompt plus max output asked for."""
        return self.prompt_tokens + (self.max_tokens or 0)


@dataclass(frozen=True, slots=True)
class Answer:
    """The model's side of a 200: ``text`` (JSON, prose or a refusal), or the tool input."""

    text: str
    finish: Finish
    completion_tokens: int
    tool_input: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Why the answer is an error, with what its body may quote.

    ``message`` is the text for ``bad_request`` / ``not_found``; ``shown_key`` the key
    presented with an ``auth`` failure (masked, unless ``key_echoed``: a careless provider),
    None if none was; ``exceeded`` / ``limit`` / ``requested`` describe a quota 429 (None for an
    injected one).
    """

    kind: ErrorKind
    message: str = ""
    model: str = ""
    param: str | None = None
    code: str | None = None
    shown_key: str | None = None
    key_echoed: bool = False
    exceeded: Literal["requests", "tokens"] | None = None
    limit: int | None = None
    used: int | None = None
    requested: int | None = None
    retry_after_s: float = 0.0


class Wire(Protocol):
    """One vendor's wire format."""

    #: The route under ``/{endpoint}`` the SDK posts to, e.g. ``/v1/chat/completions``.
    path: str
    #: What the SDK's base URL adds after ``/{endpoint}`` (``/v1`` for OpenAI, else '').
    base_path: str

    def parse(self, raw: bytes) -> ChatCall:
        """Read and check a request body; raise ``BadRequest`` as the API would."""
        ...

    def presented_key(self, headers: Mapping[str, str]) -> str:
        """The API key the request carries ('' if none)."""
        ...

    def success(self, call: ChatCall, answer: Answer, digest: str) -> dict[str, Any]:
        """The 200 body; ids derive from ``digest`` (64 hex digits), so reruns match."""
        ...

    def error(self, problem: Problem) -> tuple[int, Any]:
        """(HTTP status, JSON body) of an error answer."""
        ...

    def headers(
        self, digest: str, quota: QuotaView | None, retry_after_s: float | None
    ) -> dict[str, str]:
        """Request id, rate-limit headers (when the profile has quotas), ``retry-after``."""
        ...


# -- helpers shared by the wire modules ----------------------------------------------------


def digest_of(seed: str) -> str:
    """64 hex digits derived from ``seed``: the source of ids."""
    return hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()


def mask_key(key: str) -> str:
    """``sk-abcdefghwxyz`` → ``sk-ab****wxyz``; keys under 12 characters show nothing.

    >>> mask_key("sk-abcdefghwxyz"), mask_key("sk-short")
    ('sk-ab****wxyz', '****')
    """
    return f"{key[:5]}****{key[-4:]}" if len(key) >= 12 else "****"


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>`` ('' if absent)."""
    value = headers.get("authorization") or ""
    return value[7:].strip() if value[:7].lower() == "bearer " else value


def retry_after_value(seconds: float) -> str:
    """``retry-after`` in whole seconds, rounded up (HTTP's delay-seconds is an integer).

    >>> retry_after_value(0.2), retry_after_value(2.0)
    ('1', '2')
    """
    return str(max(math.ceil(seconds - 1e-9), 0))


def first_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the first user message ('' if there is none)."""
    for message in messages:
        if message.get("role") == "user":
            return tokens.message_text(message)
    return ""


def partial_call_fields(raw: bytes) -> tuple[str, str]:
    """(model, first user text) of a body that may be malformed, for the request log."""
    try:
        body = json.loads(raw)
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        model = body.get("model")
        return (model if isinstance(model, str) else ""), first_user_text(messages)
    except (ValueError, AttributeError, TypeError):
        return "", ""
