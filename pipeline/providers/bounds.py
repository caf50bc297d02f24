"""The most input tokens a vendor can bill for one request, as its adapter sends it.

    bound = input_token_bound(request, endpoint.kind)      # an int, never below the bill
    reserve = reservation_usd(endpoint, bound, max_out)    # what the budget holds first

The budget reserves with this bound before each call, which is what makes the cap hard, so
it must never be below what the vendor bills. It counts what a vendor bills as input:

- each message's role and content, and the system prompt;
- the schema as the adapter sends it: OpenAI's request fields of the endpoint's
  structured mode (``response_format``, ``guided_json``, or the schema's prompt text),
  Mistral's ``response_format`` (name, schema, strict), Anthropic's
  ``output_config.format`` (the schema after the SDK's ``transform_schema``) or, in
  ``tool`` mode, its forced tool (name, description, ``input_schema``) and ``tool_choice``;
- each protocol's fixed overhead, from ``OVERHEADS``: message framing, the reply
  priming, the system prompt a vendor adds for a response format or for tool use.

The basis: every tokenizer these vendors use (byte-level BPE, or SentencePiece with byte
fallback) turns ``b`` bytes of text into at most ``b`` tokens, since each token stands for
at least one byte. So UTF-8 bytes bound the text's tokens; what the vendor adds around the
text (framing tokens, injected system prompts) is not in the bytes and is added from the
table. A schema is counted as its JSON (``json.dumps`` with its default ``", "`` and
``": "``): vendors render it into the prompt as JSON or as a terser TypeScript-like type,
neither longer than that.

The schema's share is computed once per schema object (a small cache keyed by its
``id`` that keeps the object alive, so the id cannot be reused): a request's schema must
not be mutated after its first call. Per call, only the messages are measured.

    >>> req = ChatRequest("m", [{"role": "user", "content": "Hi"}], "s", {"type": "object"}, 9)
    >>> input_token_bound(req, "openai")    # (4 + 4 + 2) + 3, + 99 bytes of format + 32
    144
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from anthropic import transform_schema

from pipeline.providers.base import ChatRequest
from pipeline.providers.structured import PROMPTED, openai_fields, schema_prompt

__all__ = ["OVERHEADS", "PROTOCOL_OF_KIND", "Overhead", "input_token_bound", "schema_parts"]


@dataclass(frozen=True, slots=True)
class Overhead:
    """Tokens a protocol bills that are not bytes of the request (see ``OVERHEADS``)."""

    per_message: int  # framing around each message (start, separator, end markers)
    reply: int  # priming of the answer (``<|start|>assistant<|message|>``)
    format_prompt: int  # system prompt added for a json_schema response format
    tool_prompt: int  # system prompt added for tool use when a tool is forced (any/tool)
    tool_prompt_auto: int  # the same when the model may choose (auto/none, tools present)
    per_tool: int  # framing around each tool definition


#: Each protocol's fixed overhead, in tokens. Where the vendor documents a figure, the
#: largest over its documented models (the bound cannot know the model's generation):
#:
#: - openai ``per_message`` 4, ``reply`` 3: OpenAI cookbook "How to count tokens with
#:   tiktoken" (examples/How_to_count_tokens_with_tiktoken.ipynb): 3 tokens per message
#:   (4 for gpt-3.5-turbo-0301) plus the role and content, every reply primed with 3.
#:   ``per_tool`` 22: the same notebook's ``num_tokens_for_tools``, func_init 7 (gpt-4o) or
#:   10 (gpt-4, gpt-3.5-turbo) + func_end 12 per function; its per-property (3) and
#:   per-enum-item (3) tokens are fewer than the JSON bytes of a property or an item.
#:   ``format_prompt`` 32: not documented (OpenAI renders the json_schema into a system
#:   message of its own); docroute's allowance for the wrapper around the schema text.
#: - anthropic ``tool_prompt`` 340 and ``tool_prompt_auto`` 530: Anthropic, "Tool use
#:   pricing" (docs.anthropic.com/en/docs/tool-use-pricing-and-tokens and the pricing page's
#:   tool-use table): the tool-use system prompt is 313 tokens for tool_choice any/tool on
#:   Claude 4.x and Sonnet 3.7, 340 on Haiku 3 / 3.5, 281 on Opus 3, 235 on Sonnet 3; for
#:   auto/none 346 on Claude 4.x, 530 on Opus 3. ``format_prompt`` 530: Anthropic says
#:   structured outputs add "an additional system prompt explaining the expected output
#:   format" (build-with-claude/structured-outputs, "Prompt modification and token
#:   costs") but not its size; docroute reserves the largest system prompt Anthropic
#:   documents adding for structure. ``per_message`` 4, ``reply`` 3: not documented; the
#:   turn markers are a few tokens, and each role's bytes are counted on top.
#: - mistral: nothing documented; its chat template's control tokens ([INST], [/INST],
#:   BOS) are fewer than OpenAI's framing, so OpenAI's figures are used, with the same
#:   ``format_prompt`` allowance.
#:
#: The simulator bills the same figures (``pipeline.simulator.tokens.OVERHEADS``; a test
#: holds the two equal), so a bound that left one out would be caught by its tests.
OVERHEADS: dict[str, Overhead] = {
    "openai": Overhead(
        per_message=4, reply=3, format_prompt=32, tool_prompt=0, tool_prompt_auto=0, per_tool=22
    ),
    "anthropic": Overhead(
        per_message=4,
        reply=3,
        format_prompt=530,
        tool_prompt=340,
        tool_prompt_auto=530,
        per_tool=0,
    ),
    "mistral": Overhead(
        per_message=4, reply=3, format_prompt=32, tool_prompt=0, tool_prompt_auto=0, per_tool=22
    ),
}

#: The wire protocol each provider kind (``pipeline.providers.PROVIDERS``) speaks.
PROTOCOL_OF_KIND: dict[str, str] = {
    "openai": "openai",
    "openai_compatible": "openai",
    "anthropic": "anthropic",
    "mistral": "mistral",
}

# (id(json_schema), protocol, mode, schema_name) -> (the schema object, its tokens). The
# object is kept so that its id stays its own while the entry lives.
_CACHE: dict[tuple[int, str, str, str], tuple[dict[str, Any], int]] = {}
_CACHE_SIZE = 64


def input_token_bound(request: ChatRequest, kind: str) -> int:
    """The most input tokens an endpoint of ``kind`` can bill for ``request``.

    ``kind`` is the endpoint's provider kind: ``openai``, ``openai_compatible``,
    ``anthropic`` or ``mistral``. See the module docstring for what is counted.
    """
    protocol = _protocol(kind)
    overhead = OVERHEADS[protocol]
    total = overhead.reply
    for message in request.messages:
        total += overhead.per_message + _bytes(message["role"]) + _bytes(message["content"])
    return total + _schema_tokens(request, protocol)


def schema_parts(request: ChatRequest, protocol: str) -> list[Any]:
    """The request parameters that carry the schema, as ``protocol``'s adapter builds them.

    ``openai`` sends what its structured mode asks for (``structured.openai_fields``: a
    response format, vLLM's ``guided_json``, or in a prompted mode the schema's prompt
    text); ``mistral`` sends ``response_format`` (its adapter has no other mode);
    ``anthropic`` sends ``output_config.format``, or in ``tool`` mode its ``tools`` and
    ``tool_choice``.
    """
    if protocol == "openai":
        fields = openai_fields(request)
        parts: list[Any] = [fields[k] for k in ("response_format", "guided_json") if k in fields]
        if request.structured_mode in PROMPTED:
            parts.append(schema_prompt(request) + "\n\n")  # appended to the system message
        return parts
    if protocol != "anthropic":
        return [
            {
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name,
                    "schema": request.json_schema,
                    "strict": True,
                },
            }
        ]
    if request.structured_mode == "tool":
        tool = {
            "name": request.schema_name,
            "description": f"Record the answer as a {request.schema_name} object.",
            "input_schema": request.json_schema,
        }
        return [[tool], {"type": "tool", "name": request.schema_name}]
    return [{"type": "json_schema", "schema": transform_schema(request.json_schema)}]


def _schema_tokens(request: ChatRequest, protocol: str) -> int:
    mode = "tool" if protocol == "anthropic" and request.structured_mode == "tool" else "format"
    key = (id(request.json_schema), protocol, request.structured_mode, request.schema_name)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is request.json_schema:
        return hit[1]
    overhead = OVERHEADS[protocol]
    fixed = overhead.tool_prompt + overhead.per_tool if mode == "tool" else overhead.format_prompt
    if request.structured_mode in PROMPTED:  # the schema's text may come in a message of its own
        fixed += overhead.per_message + len("system")
    tokens = fixed + sum(
        _bytes(json.dumps(part, ensure_ascii=False)) for part in schema_parts(request, protocol)
    )
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()  # a run uses one or two schemas; a full cache is a test's leftovers
    _CACHE[key] = (request.json_schema, tokens)
    return tokens


def _protocol(kind: str) -> str:
    try:
        return PROTOCOL_OF_KIND[kind]
    except KeyError:
        raise ValueError(
            f"unknown provider kind {kind!r}; expected one of: {', '.join(PROTOCOL_OF_KIND)}"
        ) from None


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
