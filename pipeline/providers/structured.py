"""How an endpoint is asked for a structured answer: the request shapes, as data.

Servers differ in what they accept, and a shape a server refuses fails every call, so the
shape is a setting (``structured_mode`` of a model, defaulted by its preset), not code:

=====================  ===========================================================  ===========
mode                   what the OpenAI-protocol request carries                      enforced by
=====================  ===========================================================  ===========
``json_schema``        ``response_format`` ``json_schema`` with ``strict: true``      the server
``json_schema_loose``  the same with ``strict: false`` (Ollama, Together, vLLM)       the server
``json_object_schema`` ``response_format`` ``{"type": "json_object", "schema": S}``   the server
                       (llama-cpp-python's server)
``guided_json``        vLLM's own ``guided_json: S`` body field                      the server
``json_object``        ``response_format`` ``json_object``, the schema in the prompt JSON only
``prompt``             no response format, the schema in the prompt                  nothing
``tool``               a forced tool call (Anthropic's adapter only)                 the server
=====================  ===========================================================  ===========

Whatever the mode, every answer is validated with pydantic afterwards: a server that does
not enforce the schema gives more invalid answers, repaired or rerouted as usual.
``openai_fields`` is what the OpenAI adapter sends and what the reservation bound counts
(``bounds.schema_parts``), so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Literal, get_args

from pipeline.providers.base import ChatRequest

StructuredMode = Literal[
    "json_schema",
    "json_schema_loose",
    "json_object_schema",
    "guided_json",
    "json_object",
    "prompt",
    "tool",
]
MODES: tuple[str, ...] = get_args(StructuredMode)

#: Modes in which the schema travels in the system prompt, not in a request field.
PROMPTED = frozenset({"json_object", "prompt"})
#: Modes the server enforces the schema in (by its vendor's rules or a grammar).
ENFORCED = frozenset(MODES) - PROMPTED

#: The modes each adapter can send (``kind`` of a provider).
MODES_OF_KIND: dict[str, frozenset[str]] = {
    "openai": frozenset(MODES) - {"tool", "guided_json"},
    "openai_compatible": frozenset(MODES) - {"tool"},
    "anthropic": frozenset({"json_schema", "tool"}),
    "mistral": frozenset({"json_schema"}),
}

#: Starts the schema's part of the system prompt in the prompted modes.
SCHEMA_PROMPT_HEAD = "Answer with one JSON object that matches this JSON Schema:"


def schema_prompt(request: ChatRequest) -> str:
    """The system-prompt text that carries the schema in a prompted mode."""
    return f"{SCHEMA_PROMPT_HEAD}\n{json.dumps(request.json_schema, ensure_ascii=False)}"


def openai_fields(request: ChatRequest) -> dict[str, Any]:
    """The body fields of an OpenAI-protocol request that ask for ``request``'s schema
    (``messages`` included: a prompted mode adds the schema to the system message)."""
    mode = request.structured_mode
    fields: dict[str, Any] = {}
    if mode == "json_schema" or mode == "json_schema_loose":
        fields["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": request.schema_name,
                "schema": request.json_schema,
                "strict": mode == "json_schema",
            },
        }
    elif mode == "json_object_schema":
        fields["response_format"] = {"type": "json_object", "schema": request.json_schema}
    elif mode == "guided_json":
        fields["guided_json"] = request.json_schema
    elif mode == "json_object":
        fields["response_format"] = {"type": "json_object"}
    elif mode != "prompt":
        raise ValueError(
            f"structured_mode {mode!r} cannot be sent over the OpenAI protocol; expected one "
            f"of: {', '.join(sorted(MODES_OF_KIND['openai_compatible']))}"
        )
    fields["messages"] = with_schema_prompt(request) if mode in PROMPTED else request.messages
    return fields


def with_schema_prompt(request: ChatRequest) -> list[dict[str, str]]:
    """``request.messages`` with the schema appended to the system message (one is added
    first when there is none)."""
    text = schema_prompt(request)
    messages = list(request.messages)
    if messages and messages[0]["role"] == "system":
        messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
    else:
        messages.insert(0, {"role": "system", "content": text})
    return messages


#: Servers that turn a schema into a grammar (llama.cpp, llama-cpp-python, vLLM's xgrammar
#: and outlines, Ollama) take a ``pattern`` only anchored (``^…$``), without lookaround, and
#: outside ``[…]`` without class escapes such as ``\S``: otherwise they warn, or drop the
#: whole schema, and accept any string. They apply it to the raw JSON text, so a ``.`` or a
#: negated class that admits ``"`` lets the model write a quote that ends the string.
_UNGRAMMATICAL = re.compile(r"\(\?[=!<]|(?<!\\)\\[dDsSwWbB]|(?<!\\)\.")


def enforcement_warnings(endpoints: Iterable[Any], json_schema: dict[str, Any]) -> list[str]:
    """What the endpoints' structured modes will not enforce of ``json_schema``, one line per
    mode (``endpoints``: objects with ``key`` and ``structured_mode``). Answers are validated
    after all the same; a constraint a server does not enforce costs repairs instead."""
    by_mode: dict[str, list[str]] = {}
    for e in endpoints:
        by_mode.setdefault(e.structured_mode, []).append(e.key)
    loose = _unenforceable_patterns(json_schema)
    out = []
    for mode, keys in sorted(by_mode.items()):
        who = ", ".join(keys)
        if mode in PROMPTED:
            out.append(
                f"{who}: structured_mode {mode} does not make the server follow the schema; "
                "answers are validated after, so expect more repairs"
            )
        elif loose and mode != "tool":
            out.append(
                f"{who}: a grammar-based server may not enforce {'; '.join(loose)} "
                "(anchor patterns ^…$, use no \\S-style escapes, and let no . or [^…] admit "
                "a raw quote); answers are validated after all the same"
            )
    return out


def _unenforceable_patterns(node: Any, path: str = "$") -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and (
            not (pattern.startswith("^") and pattern.endswith("$"))
            or _UNGRAMMATICAL.search(_outside_brackets(pattern))
            or any('"' not in c for c in re.findall(r"\[\^((?:\\.|[^\]\\])*)\]", pattern))
        ):
            found.append(f"the pattern {pattern!r} at {path}")
        for key, value in node.items():
            if key in ("properties", "$defs") and isinstance(value, dict):
                for name, child in value.items():
                    found += _unenforceable_patterns(child, f"{path}.{name}")
            elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties"):
                found += _unenforceable_patterns(value, f"{path}[]" if key == "items" else path)
    elif isinstance(node, list):
        for child in node:
            found += _unenforceable_patterns(child, path)
    return list(dict.fromkeys(found))


def _outside_brackets(pattern: str) -> str:
    """``pattern`` without its ``[…]`` classes (inside them escapes are read as characters)."""
    return re.sub(r"\[(?:\\.|[^\]\\])*\]", "", pattern)
