"""Checking an answer against the task's schema, and the repair prompt when it fails.

    output_json = validate_reply(reply, spec)        # or raises InvalidOutput(kind=...)
    messages = repair_messages(messages, exc)        # one more try at the same endpoint

Every answer is validated again with pydantic, whatever the provider promised about
structured output; the stored answer is the validated model's JSON.
"""

from __future__ import annotations

from pydantic import ValidationError

from pipeline.errors import InvalidKind, InvalidOutput, OutputTruncated
from pipeline.providers.base import ProviderReply
from schemas import SchemaSpec

#: How much of a bad answer is echoed back in a repair prompt.
_ECHO_CHARS = 4000
_MAX_ERRORS = 8


def validate_reply(reply: ProviderReply, spec: SchemaSpec) -> str:
    """The validated answer as compact JSON; ``InvalidOutput`` says why it is unusable."""

    def invalid(message: str, kind: InvalidKind) -> InvalidOutput:
        cls = OutputTruncated if kind == "truncated" else InvalidOutput
        return cls(
            message,
            kind=kind,
            raw=reply.text,
            usage=reply.usage,
            request_id=reply.request_id,
            http_status=200,  # the provider answered, and billed
        )

    if reply.refusal:
        raise invalid(f"the model refused: {reply.refusal[:200]}", "refusal")
    if reply.finish_reason == "length":
        raise invalid("the answer was cut off at max output tokens", "truncated")
    if not reply.text or not reply.text.strip():
        raise invalid("the answer was empty", "empty")
    try:
        value = spec.model.model_validate_json(reply.text)
    except ValidationError as exc:
        kind: InvalidKind = "unparseable" if _is_json_error(exc) else "schema_invalid"
        raise invalid(describe(exc), kind) from None
    return value.model_dump_json()


def _is_json_error(exc: ValidationError) -> bool:
    return any(e["type"] == "json_invalid" for e in exc.errors())


def describe(exc: ValidationError) -> str:
    """A short list of what is wrong, in the model's words: ``key_points: too long; …``."""
    parts = []
    for err in exc.errors()[:_MAX_ERRORS]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - _MAX_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def first_messages(instructions: str, chunk_text: str) -> list[dict[str, str]]:
    """The conversation for a chunk: the task's instructions, then the chunk text verbatim."""
    return [
        {"role": "system", "content": instructions},
        {"role": "user", "content": chunk_text},
    ]


def repair_messages(messages: list[dict[str, str]], exc: InvalidOutput) -> list[dict[str, str]]:
    """The conversation again, plus the bad answer and what was wrong with it."""
    answer = (exc.raw or "")[:_ECHO_CHARS]
    ask = (
        f"Your answer could not be used ({exc.kind}): {exc.message}\n"
        "Answer again with only a JSON object that matches the required schema exactly."
    )
    if exc.kind == "truncated":
        ask += " Keep it shorter so that it is complete."
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": ask}]


def prompt_token_estimate(messages: list[dict[str, str]], chunk_tokens: int) -> int:
    """A realistic estimate (for context-window fit): the chunk's count plus the rest by chars/4."""
    others = [messages[0], *messages[2:]]
    return chunk_tokens + sum(-(-len(m["content"]) // 4) for m in others) + 4 * len(messages) + 3
