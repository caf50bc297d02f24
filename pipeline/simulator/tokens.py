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

Like the vendors, the prompt also bills the structure the request asks for, as compact
JSON by the same four characters a token, plus the protocol's fixed overhead
(``OVERHEADS``, the figures of ``pipeline.providers.bounds.OVERHEADS``):

- a ``json_schema`` response format (OpenAI's ``response_format``, Anthropic's
  ``output_config.format``): ``json_tokens(format) + format_prompt``;
- OpenAI tools: ``json_tokens(tool) + per_tool`` each, plus ``json_tokens(tool_choice)``;
- Anthropic tools: ``json_tokens(tools) + json_tokens(tool_choice)`` plus the tool-use
  system prompt, ``tool_prompt`` when a tool is forced (``any``/``tool``), else
  ``tool_prompt_auto``.

    >>> prompt_tokens([{"role": "user", "content": "abcde"}])
    9
    >>> completion_tokens("abcde"), chars_for_tokens(2)
    (2, 8)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


@dataclass(frozen=True, slots=True)
class Overhead:
    """Tokens a protocol bills beyond its text: what each vendor documents adding."""

    per_message: int  # framing around each message (``TOKENS_PER_MESSAGE`` here)
    reply: int  # priming of the answer (``TOKENS_PER_REPLY`` here)
    format_prompt: int  # system prompt added for a json_schema response format
    tool_prompt: int  # tool-use system prompt when a tool is forced (any/tool)
    tool_prompt_auto: int  # the same when the model may choose (auto/none)
    per_tool: int  # framing around each tool definition


#: Per protocol family (Gemini speaks OpenAI's); where the figures come from is said in
#: ``pipeline.providers.bounds``, which holds the same table for the budget's bound.
OVERHEADS: dict[str, Overhead] = {
    "openai": Overhead(4, TOKENS_PER_REPLY, 32, 0, 0, 22),
    "anthropic": Overhead(4, TOKENS_PER_REPLY, 530, 340, 530, 0),
    "mistral": Overhead(4, TOKENS_PER_REPLY, 32, 0, 0, 22),
}


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


def json_tokens(value: Any) -> int:
    """Tokens of ``value`` as compact JSON.

    >>> json_tokens({"type": "object"})   # '{"type":"object"}' is 17 characters
    5
    """
    return text_tokens(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def completion_tokens(answer: str) -> int:
    """Completion tokens of an answer (see the module docstring)."""
    return text_tokens(answer)


def chars_for_tokens(tokens: int) -> int:
    """How many characters ``tokens`` tokens hold: an answer cut to this length fits."""
    return tokens * CHARS_PER_TOKEN
