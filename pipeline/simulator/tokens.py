"""The simulator's token arithmetic: four characters a token, plus OpenAI's message framing.

The pipeline's budget guard reserves with the same formula, so keep the two in step:

- ``prompt_tokens = sum(ceil(len(content) / 4) + 4 for each message) + 3``
- ``completion_tokens = ceil(len(answer) / 4)``

``len`` counts characters (code points), not bytes. A message's content is its string, or
the concatenated ``text`` of its content parts; a message without content counts 4.

Every protocol uses it: OpenAI, Gemini and Mistral count their ``messages``; Anthropic
counts its ``system`` prompt (string or text blocks) as one more message before them. An
answer is its content text; a forced tool's answer is its input as compact JSON. Against a
TPM quota a request costs ``prompt_tokens + max output tokens requested`` (0 if it asks
for none), as OpenAI counts it.

    >>> prompt_tokens([{"role": "user", "content": "abcde"}])
    9
    >>> completion_tokens("abcde"), chars_for_tokens(2)
    (2, 8)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message: its ``content`` string, or its text parts joined.

    >>> message_text({"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]})
    'ab'
    """
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def text_tokens(text: str) -> int:
    """``ceil(len(text) / 4)`` without floats."""
    return -(-len(text) // CHARS_PER_TOKEN)


def prompt_tokens(messages: Iterable[dict[str, Any]]) -> int:
    """Prompt tokens of a conversation (see the module docstring)."""
    total = TOKENS_PER_REPLY
    for message in messages:
        total += text_tokens(message_text(message)) + TOKENS_PER_MESSAGE
    return total


def completion_tokens(answer: str) -> int:
    """Completion tokens of an answer (see the module docstring)."""
    return text_tokens(answer)


def chars_for_tokens(tokens: int) -> int:
    """How many characters ``tokens`` tokens hold: an answer cut to this length fits."""
    return tokens * CHARS_PER_TOKEN
