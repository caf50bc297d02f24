"""The model's side of a 200: what the simulator "generates" for a request.

Deterministic: the same request text gives the same answer. A schema gets an instance built
from the first user message (``schema_gen``); ``invalid`` breaks it; without a schema the
answer is the text's first sentences. ``fault`` shapes it further (``refusal``,
``truncated``), and an answer longer than the request's max tokens is cut:

    >>> from pipeline.simulator.wire_openai import parse_chat_request
    >>> call = parse_chat_request(b'{"model": "m", "max_tokens": 2, '
    ...     b'"messages": [{"role": "user", "content": "One. Two."}]}')
    >>> answer_for(call, "none", False, random.Random(0))
    Answer(text='One. Two', finish='length', completion_tokens=2, tool_input=None)
"""

from __future__ import annotations

import json
import random
from typing import Any

from pipeline.sim_profiles import Fault

from . import tokens
from .hints import hints_for
from .wire import REFUSAL_TEXT, Answer, ChatCall


def answer_for(call: ChatCall, fault: Fault, invalid: bool, rng: random.Random) -> Answer:
    """The model's answer: a refusal, a forced tool's input, or text; cut when too long.

    ``fault == "truncated"`` cuts it to half its length (and at most ``max_tokens``).
    """
    if fault == "refusal":
        return Answer(REFUSAL_TEXT, "refusal", tokens.completion_tokens(REFUSAL_TEXT))
    budget = tokens.chars_for_tokens(call.max_tokens) if call.max_tokens else None
    if call.tool_name is not None and call.schema is not None:
        value = _instance(call, invalid, rng)
        tool_input = value if isinstance(value, dict) else {"value": value}
        return _tool_answer(tool_input, budget, cut=fault == "truncated")
    text = answer_text(call, invalid, rng)
    if fault == "truncated":
        budget = min(budget, len(text) // 2) if budget is not None else len(text) // 2
    if budget is not None and len(text) > budget:
        text = text[:budget]
        return Answer(text, "length", tokens.completion_tokens(text))
    return Answer(text, "stop", tokens.completion_tokens(text))


def _tool_answer(value: dict[str, Any], budget: int | None, *, cut: bool) -> Answer:
    """A tool input; when cut, or over ``budget`` characters, only its first properties."""
    text = _compact(value)
    if cut:
        budget = min(budget, len(text) // 2) if budget is not None else len(text) // 2
    if budget is None or len(text) <= budget:
        return Answer(text, "stop", tokens.completion_tokens(text), value)
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if len(_compact({**kept, key: item})) > budget:
            break
        kept[key] = item
    text = _compact(kept)
    return Answer(text, "length", tokens.completion_tokens(text), kept)


def answer_text(call: ChatCall, invalid: bool, rng: random.Random) -> str:
    """The assistant's content: JSON fitting (or, if ``invalid``, breaking) the schema; or prose.

    Without a schema, ``invalid`` JSON mode answers prose: not JSON at all.
    """
    text = call.first_user_text
    if call.schema is not None:
        return _compact(_instance(call, invalid, rng))
    if call.json_mode and not invalid:
        return json.dumps({"summary": plain_answer(text)}, ensure_ascii=False)
    return plain_answer(text)


def _instance(call: ChatCall, invalid: bool, rng: random.Random) -> Any:
    assert call.schema is not None
    text = call.first_user_text
    return call.schema.invalid_instance(text, rng) if invalid else call.schema.instance(text)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def plain_answer(text: str, sentences: int = 3) -> str:
    """The first ``sentences`` sentences of ``text``: the simulator's prose answer.

    >>> plain_answer("One. Two! Three? Four.", 2)
    'One. Two!'
    """
    found = hints_for(text).sentences
    return " ".join(found[:sentences]) if found else "No text was provided."
