"""The reservation bound covers every input token a vendor bills: messages, the schema or
tool definitions as the adapter sends them, and each protocol's fixed overhead.

Real SDK adapters (strict response validation) call the simulator over loopback, which
bills schema and tool tokens the way the vendors do (``pipeline.simulator.tokens``); the
tokens each reply reports are compared with ``input_token_bound`` of the request sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from pydantic import BaseModel, Field, SecretStr, create_model

from pipeline.dispatch import Dispatcher
from pipeline.models import Chunk
from pipeline.policy import BudgetGuard, DispatchSettings, Endpoint, Router
from pipeline.prices import Price
from pipeline.providers import ChatRequest, EndpointSettings, ProviderReply, build_provider
from pipeline.providers import anthropic as anthropic_adapter
from pipeline.providers import mistral as mistral_adapter
from pipeline.providers.bounds import OVERHEADS, input_token_bound, schema_parts
from pipeline.providers.structured import MODES_OF_KIND, PROMPTED
from pipeline.simulator import EndpointProfile
from pipeline.simulator import tokens as sim_tokens
from pipeline.validation import first_messages
from schemas import SchemaSpec, get_schema

SHORT = "Acme GmbH pays EUR 1,200."
#: (provider kind, preset, the simulator's protocol for it)
KINDS = [
    ("openai", None, "openai"),
    ("openai_compatible", "gemini", "gemini"),
    ("mistral", None, "mistral"),
    ("anthropic", None, "anthropic"),
]
#: Every structured mode each kind's adapter can send, with the kind's protocol.
CASES = [
    (kind, preset, protocol, mode)
    for kind, preset, protocol in KINDS
    for mode in sorted(MODES_OF_KIND[kind])
]


def _wide_model(fields: int = 60) -> type[BaseModel]:
    """A flat record of many described string fields: a schema far longer than a chunk."""
    spec: dict[str, Any] = {
        f"detail_{i:02d}": (
            str,
            Field(description=f"Detail {i} of the record exactly as the text states it."),
        )
        for i in range(fields)
    }
    return create_model("WideRecord", **spec)


WIDE = SchemaSpec("wide_record", "1", _wide_model(), "Fill in the record from the text.")
SCHEMAS = {"chunk_summary": get_schema("chunk_summary"), "wide_record": WIDE}


def _request(spec: SchemaSpec, text: str, mode: str, model: str = "m") -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=first_messages(spec.instructions, text),
        schema_name=spec.name,
        json_schema=spec.json_schema(),
        max_output_tokens=4000,
        temperature=0.0,
        structured_mode=mode,
    )


def _settings(name: str, url: str) -> EndpointSettings:
    return EndpointSettings(
        name=name,
        base_url=url,
        api_key=SecretStr("sk-test-key-000"),
        timeout_s=10,
        strict_validation=True,
    )


def _complete(simulator: Any, kind: str, preset: str | None, protocol: str, request: ChatRequest,
              name: str) -> ProviderReply:  # fmt: skip
    url = simulator.add_endpoint(name, EndpointProfile(protocol=protocol))  # type: ignore[arg-type]
    provider = build_provider(kind, _settings(name, url), preset=preset)

    async def go() -> ProviderReply:
        try:
            return await provider.complete(request)
        finally:
            await provider.aclose()

    return asyncio.run(asyncio.wait_for(go(), timeout=30))


@pytest.mark.parametrize("schema", list(SCHEMAS))
@pytest.mark.parametrize(("kind", "preset", "protocol", "mode"), CASES)
def test_billed_input_never_exceeds_the_bound(
    simulator: Any, kind: str, preset: str | None, protocol: str, mode: str, schema: str
) -> None:
    request = _request(SCHEMAS[schema], SHORT, mode)
    reply = _complete(simulator, kind, preset, protocol, request, f"{kind}-{mode}-{schema}")
    billed = reply.usage.input_tokens
    assert billed == simulator.tokens_served(f"{kind}-{mode}-{schema}")[0]
    assert 0 < billed <= input_token_bound(request, kind)


def _message_only_bound(request: ChatRequest) -> int:
    """The bound the budget reserved with before: message bytes and 8 tokens each."""
    return sum(len(m["content"].encode("utf-8")) + 8 for m in request.messages) + 8


@pytest.mark.parametrize(("kind", "preset", "protocol", "mode"), CASES)
def test_a_large_schema_on_a_short_chunk_outgrows_the_message_only_bound(
    simulator: Any, kind: str, preset: str | None, protocol: str, mode: str
) -> None:
    request = _request(WIDE, SHORT, mode)
    reply = _complete(simulator, kind, preset, protocol, request, f"wide-{kind}-{mode}")
    billed = reply.usage.input_tokens
    assert billed > 2 * _message_only_bound(request), "the schema is billed too"
    assert billed <= input_token_bound(request, kind)


@pytest.mark.parametrize(
    ("mode", "entry"), [("tool", "tool_prompt"), ("json_schema", "format_prompt")]
)
def test_a_bound_without_anthropics_injected_system_prompt_is_caught(
    simulator: Any, mode: str, entry: str
) -> None:
    """With a tiny schema and chunk, the bytes' slack over chars/4 is smaller than the
    system prompt Anthropic adds: leaving the table's entry out undercuts the bill."""
    tiny = SchemaSpec("tiny", "1", create_model("Tiny", ok=(bool, ...)), "Say ok.")
    request = _request(tiny, "Hi.", mode)
    billed = _complete(simulator, "anthropic", None, "anthropic", request, f"tiny-{mode}")
    bound = input_token_bound(request, "anthropic")
    missing = getattr(OVERHEADS["anthropic"], entry)
    assert bound - missing < billed.usage.input_tokens <= bound


def test_the_simulator_bills_the_overheads_of_the_bounds_table() -> None:
    mine = {name: dataclasses.asdict(o) for name, o in OVERHEADS.items()}
    simulated = {name: dataclasses.asdict(o) for name, o in sim_tokens.OVERHEADS.items()}
    assert mine == simulated
    assert {o.per_message for o in OVERHEADS.values()} == {sim_tokens.TOKENS_PER_MESSAGE}
    assert {o.reply for o in OVERHEADS.values()} == {sim_tokens.TOKENS_PER_REPLY}


@pytest.mark.parametrize("mode", sorted(MODES_OF_KIND["anthropic"]))
def test_schema_parts_are_what_the_anthropic_and_mistral_adapters_send(mode: str) -> None:
    request = _request(WIDE, SHORT, mode)
    claude = anthropic_adapter._params(request)
    if mode == "tool":
        assert schema_parts(request, "anthropic") == [claude["tools"], claude["tool_choice"]]
    else:
        assert schema_parts(request, "anthropic") == [claude["output_config"]["format"]]
    sent = mistral_adapter._params(request)["response_format"]
    assert schema_parts(request, "mistral") == [sent.model_dump(by_alias=True, exclude_none=True)]


@pytest.mark.parametrize("mode", sorted(MODES_OF_KIND["openai_compatible"]))
def test_schema_parts_are_what_the_openai_adapter_sends(mode: str) -> None:
    request = _request(WIDE, SHORT, mode)
    openai = build_provider(
        "openai_compatible", _settings("shape", "http://127.0.0.1:9/v1"), preset="vllm"
    )
    try:
        body = openai._params(request)["extra_body"]  # type: ignore[attr-defined]
    finally:
        asyncio.run(openai.aclose())
    sent = [body[k] for k in ("response_format", "guided_json") if k in body]
    parts = schema_parts(request, "openai")
    if mode in PROMPTED:  # the schema travels in the system message instead
        assert "schema" not in json.dumps(sent)
        assert body["messages"][0]["content"].endswith(parts[-1].strip())
        assert body["messages"][0]["content"].startswith(request.messages[0]["content"])
        parts = parts[:-1]
    else:
        assert body["messages"] == request.messages
    assert parts == sent


def test_the_schema_share_follows_the_schema_not_the_messages() -> None:
    request = _request(WIDE, SHORT, "tool")
    first = input_token_bound(request, "anthropic")
    longer = dataclasses.replace(request, messages=first_messages("x" * 100, SHORT))
    assert input_token_bound(longer, "anthropic") == first + 100 - len(WIDE.instructions)
    other = dataclasses.replace(request, json_schema=get_schema("chunk_summary").json_schema())
    assert input_token_bound(other, "anthropic") < first, "another schema is measured afresh"
    with pytest.raises(ValueError, match="unknown provider kind 'gemini'; expected one of"):
        input_token_bound(request, "gemini")


def test_budget_holds_when_the_schema_outweighs_the_chunk(simulator: Any) -> None:
    """The dispatcher reserves with the bound: with short chunks and a wide schema, no
    call costs more than was reserved for it, and the ledger stays within the cap."""
    url = simulator.add_endpoint("wide-eu", EndpointProfile())
    provider = build_provider("openai", _settings("wide-eu", url))
    price = Price(50.0, 0.0, 50.0, 128_000, 4096, "t")  # input only: the schema is the bill
    per_call = price.worst_case_usd(
        input_token_bound(_request(WIDE, SHORT, "json_schema"), "openai"), 0
    )
    cap = 6.5 * per_call
    dispatcher = Dispatcher(
        run_id="run-wide",
        router=Router([Endpoint("wide-eu", "openai", "eu", "gpt-wide", price, True, 0)]),
        budget=BudgetGuard(cap),
        providers={"wide-eu": provider},
        schema=WIDE,
        settings=DispatchSettings(
            instructions=WIDE.instructions, max_output_tokens=2000, concurrency=4
        ),
    )
    chunks = [
        Chunk(f"c{i}", f"d{i}", "eu/a.txt", 0, 0, len(SHORT), 8, SHORT, ("eu",), "r")
        for i in range(12)
    ]

    async def go() -> Any:
        try:
            return await dispatcher.run_batch(chunks)
        finally:
            await provider.aclose()

    out = asyncio.run(asyncio.wait_for(go(), timeout=60))
    billed = [e for e in out.ledger if e.attempt > 0]
    assert billed and all(e.cost_usd <= e.reserved_usd for e in billed), [
        (e.cost_usd, e.reserved_usd) for e in billed
    ]
    assert sum(e.cost_usd for e in out.ledger) <= cap
