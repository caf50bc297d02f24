"""Dispatch promises over random worlds (hypothesis).

A world is 1-6 endpoints in random regions with random prices, context windows and
structured-output support; chunks with random region sets, lengths and documents; a
random budget (often tiny), per-document cap, exhaustion policy and strategy; a random
concurrency (1-300); and, per endpoint, a drawn script of what each call does (a valid
answer, a low-confidence one, broken JSON, a schema miss, a truncation, or any error of
``pipeline.errors``). The providers are in-process fakes of the ``Provider`` contract
that log every call, so the log is a witness independent of the ledger. Time is virtual:
backoff, quota pauses and cooldowns advance a shared clock instead of sleeping.

Whatever the world, these hold:

- no call goes to an endpoint outside the chunk's regions, or one whose window cannot
  hold the prompt plus the max output, or one without structured output;
- the ledger total is within the run cap, and each document's within its cap;
- every chunk ends with exactly one result, in a terminal status, and a skipped chunk
  made no call;
- each chunk's attempts are numbered 1..n in the ledger, n is the result's ``attempts``,
  and the fake providers saw exactly n calls for it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pipeline import errors
from pipeline.dispatch import Dispatcher
from pipeline.models import Chunk, Usage
from pipeline.policy import (
    BudgetGuard,
    Cascade,
    Cheapest,
    DispatchSettings,
    Endpoint,
    EndpointGate,
    Ordered,
    Router,
    Strategy,
)
from pipeline.policy.routing import fits
from pipeline.prices import Price
from pipeline.providers import ChatRequest, Provider, ProviderReply
from pipeline.providers.bounds import input_token_bound
from pipeline.validation import first_messages, prompt_token_estimate
from schemas._spec import SchemaSpec

REGIONS = ("eu", "us", "ch")
ACTIONS = (
    "ok", "ok", "ok", "low", "broken_json", "schema_miss", "truncated", "refusal",
    "rate_limited", "overloaded", "server_error", "timeout", "dropped",
    "auth", "bad_request", "context_exceeded",
)  # fmt: skip
ERRORS: dict[str, type[errors.ProviderError]] = {
    "rate_limited": errors.RateLimited,
    "overloaded": errors.Overloaded,
    "server_error": errors.ServerError,
    "timeout": errors.Timeout,
    "dropped": errors.ConnectionDropped,
    "auth": errors.AuthError,
    "bad_request": errors.BadRequest,
    "context_exceeded": errors.ContextExceeded,
}
WORDS = "Acme GmbH pays EUR 1,200 to Beta Ltd on 3 March 2025 under the services agreement. "


class Rated(BaseModel):
    summary: str
    confidence: float


SCHEMA = SchemaSpec("rated", "1", Rated, "Summarise the text and rate your confidence.")


@dataclass(frozen=True)
class World:
    endpoints: list[Endpoint]
    scripts: dict[str, list[str]]
    usage_share: float  # reported tokens as a share of the reservation bound (1.0: all of it)
    chunks: list[Chunk]
    cap: float
    document_cap: float | None
    on_exhausted: str
    strategy: Strategy
    concurrency: int
    max_output_tokens: int
    max_attempts: int
    repair_attempts: int
    retries: int


class Clock:
    """Virtual time: sleeping advances it (and yields to the loop)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


class Fake:
    """An endpoint that does what its script says, one step per call, then answers."""

    def __init__(self, name: str, script: list[str], share: float, log: list[Any]) -> None:
        self.name = name
        self.script = list(script)
        self.share = share
        self.log = log

    async def complete(self, request: ChatRequest) -> ProviderReply:
        self.log.append((self.name, request.model, request.messages[1]["content"]))
        await asyncio.sleep(0)  # let other calls interleave
        action = self.script.pop(0) if self.script else "ok"
        usage = Usage(
            int(input_token_bound(request, "openai") * self.share),  # 1.0: the whole bound
            int(request.max_output_tokens * self.share),
        )
        if action in ERRORS:
            raise ERRORS[action](f"injected {action}", provider=self.name, retry_after=1.0)
        text = {
            "ok": json.dumps({"summary": "s", "confidence": 0.95}),
            "low": json.dumps({"summary": "s", "confidence": 0.1}),
            "broken_json": '{"summary": "s", "confi',
            "schema_miss": json.dumps({"summary": 3}),
            "truncated": '{"summary": "s',
            "refusal": None,
        }[action]
        return ProviderReply(
            text=text,
            finish_reason="length" if action == "truncated" else "stop",
            usage=usage,
            refusal="I cannot help with that." if action == "refusal" else None,
            model_reported=request.model,
        )

    async def aclose(self) -> None:
        return None


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n = draw(st.integers(1, 6))
    endpoints = []
    for i in range(n):
        price = Price(
            input_per_mtok=draw(st.sampled_from([0.0, 0.01, 0.5, 3.0, 15.0])),
            output_per_mtok=draw(st.sampled_from([0.0, 0.04, 2.0, 12.0, 60.0])),
            cached_input_per_mtok=0.0,
            context_window=draw(st.sampled_from([400, 1200, 8000, 128_000])),
            max_output_tokens=draw(st.sampled_from([256, 4096])),
            priced_at="t",
        )
        structured = draw(st.sampled_from([True, True, True, False]))
        region = draw(st.sampled_from(REGIONS))
        endpoints.append(Endpoint(f"p{i}", "openai", region, f"m{i}", price, structured, i))
    scripts = {e.provider: draw(st.lists(st.sampled_from(ACTIONS), max_size=10)) for e in endpoints}
    chunks = []
    for i in range(draw(st.integers(1, 40))):
        regions = tuple(draw(st.lists(st.sampled_from(REGIONS), unique=True, max_size=3)))
        text = f"[{i}] " + WORDS * draw(st.integers(1, 40))
        doc = draw(st.sampled_from(["d0", "d1", "d2"]))
        chunks.append(
            Chunk(f"c{i}", doc, f"{doc}.txt", i, 0, len(text), len(text) // 4, text, regions, "r")
        )
    # Budgets in units of one typical call at the cheapest endpoint, so that they run out
    # midway as often as not (0: nothing fits; 1000: never binds).
    max_output_tokens = draw(st.sampled_from([64, 300, 1000]))
    unit = min(e.price.worst_case_usd(600, max_output_tokens) for e in endpoints) or 1e-5
    calls = draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 6.0, 20.0, 1000.0]))
    per_doc = draw(st.sampled_from([None, None, 0.7, 3.0]))
    strategy: Strategy = draw(
        st.sampled_from([Cheapest(), Ordered(), Cascade("confidence", 0.7), Cascade()])
    )
    return World(
        endpoints=endpoints,
        scripts=scripts,
        usage_share=draw(st.sampled_from([0.0, 0.3, 1.0, 1.0])),
        chunks=chunks,
        cap=calls * unit,
        document_cap=per_doc * unit if per_doc is not None else None,
        on_exhausted=draw(st.sampled_from(["stop", "downgrade"])),
        strategy=strategy,
        concurrency=draw(st.integers(1, 300)),
        max_output_tokens=max_output_tokens,
        max_attempts=draw(st.integers(1, 6)),
        repair_attempts=draw(st.integers(0, 1)),
        retries=draw(st.integers(0, 2)),
    )


def _dispatch(world: World) -> tuple[Any, list[Any], BudgetGuard]:
    clock = Clock()
    calls: list[Any] = []
    providers: dict[str, Provider] = {
        e.provider: Fake(e.provider, world.scripts[e.provider], world.usage_share, calls)
        for e in world.endpoints
    }
    gates = {
        e.provider: EndpointGate(cooldown_after=3, cooldown_s=5.0, clock=clock, sleep=clock.sleep)
        for e in world.endpoints
    }
    budget = BudgetGuard(world.cap, document_cap_usd=world.document_cap)
    dispatcher = Dispatcher(
        run_id="run-prop",
        router=Router(world.endpoints),
        budget=budget,
        providers=providers,
        schema=SCHEMA,
        settings=DispatchSettings(
            instructions=SCHEMA.instructions,
            max_output_tokens=world.max_output_tokens,
            max_attempts=world.max_attempts,
            repair_attempts=world.repair_attempts,
            retries_per_endpoint=world.retries,
            backoff_initial_s=0.5,
            concurrency=world.concurrency,
            strategy=world.strategy,
            on_exhausted=world.on_exhausted,  # type: ignore[arg-type]
        ),
        gates=gates,
        sleep=clock.sleep,
    )
    half = len(world.chunks) // 2  # two batches at once share the run's guard and router

    async def go() -> Any:
        parts = [world.chunks[:half], world.chunks[half:]]
        return await asyncio.gather(*(dispatcher.run_batch(p) for p in parts if p))

    outcomes = asyncio.run(asyncio.wait_for(go(), timeout=60))
    return outcomes, calls, budget


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(worlds())
def test_dispatch_promises_hold_in_any_world(world: World) -> None:
    outcomes, calls, _ = _dispatch(world)
    results = [r for o in outcomes for r in o.results]
    ledger = [e for o in outcomes for e in o.ledger]
    chunk_of = {c.text: c for c in world.chunks}
    by_id = {c.chunk_id: c for c in world.chunks}
    endpoint_of = {e.provider: e for e in world.endpoints}

    # Residency and preflight: every call the providers saw was allowed for its chunk.
    for provider, model, text in calls:
        chunk, e = chunk_of[text], endpoint_of[provider]
        assert e.region in chunk.regions, (provider, chunk.regions)
        assert e.structured_output and model == e.model
        messages = first_messages(SCHEMA.instructions, chunk.text)
        estimate = prompt_token_estimate(messages, chunk.token_estimate)
        assert fits(e, estimate, world.max_output_tokens), (provider, estimate)
    assert all(e.region in by_id[e.chunk_id].regions for e in ledger if e.provider is not None)

    # Budget: the run's ledger total and each document's stay within their caps.
    assert sum(e.cost_usd for e in ledger) <= world.cap + 1e-12
    if world.document_cap is not None:
        per_doc: Counter[str] = Counter()
        for e in ledger:
            per_doc[by_id[e.chunk_id].doc_id] += e.cost_usd  # type: ignore[assignment]
        assert max(per_doc.values(), default=0.0) <= world.document_cap + 1e-12

    # Exactly once: one terminal result per chunk.
    assert sorted(r.chunk_id for r in results) == sorted(by_id)
    calls_per_chunk = Counter(chunk_of[text].chunk_id for _, _, text in calls)
    attempts: dict[str, list[int]] = defaultdict(list)
    for e in ledger:
        if e.provider is None:
            assert e.attempt == 0 and e.cost_usd == 0.0
        else:
            attempts[e.chunk_id].append(e.attempt)
    for r in results:
        assert r.status in ("succeeded", "failed", "skipped")
        n = r.attempts
        assert attempts[r.chunk_id] == list(range(1, n + 1)), (r.chunk_id, attempts[r.chunk_id])
        assert calls_per_chunk[r.chunk_id] == n
        assert n <= world.max_attempts
        if r.status == "succeeded":
            assert r.output is not None and r.region in by_id[r.chunk_id].regions
            Rated.model_validate_json(r.output)
        if r.status == "skipped":
            assert r.reason in ("budget_exhausted", "document_breaker") and n == 0
        if r.excluded is not None:
            reasons = {x["reason"] for x in json.loads(r.excluded)}
            allowed = {
                "context_window",
                "no_structured_output",
                "disabled",
                "cooling_down",
                "budget_downgrade",
            }
            assert reasons <= allowed


# -- the reservation bound over random requests ---------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
FIELD_TYPES = ("string", "integer", "boolean", "enum", "array")


@st.composite
def json_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """A strict object schema with random fields, descriptions and enums (any script)."""
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True), max_size=12,
                          unique=True))  # fmt: skip
    properties: dict[str, Any] = {}
    for name in names:
        kind = draw(st.sampled_from(FIELD_TYPES))
        node: dict[str, Any] = {"description": draw(TEXT)}
        if kind == "enum":
            node |= {"type": "string", "enum": draw(st.lists(TEXT, min_size=1, max_size=5))}
        elif kind == "array":
            node |= {"type": "array", "items": {"type": "string"}}
        else:
            node["type"] = kind
        properties[name] = node
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


@st.composite
def bound_requests(draw: st.DrawFn) -> tuple[str, ChatRequest]:
    messages = first_messages(draw(TEXT), "x" + draw(TEXT))  # a user turn is never blank
    if draw(st.booleans()):  # a repair: the bad answer echoed, and what was wrong
        messages += [
            {"role": "assistant", "content": draw(TEXT)},
            {"role": "user", "content": "y" + draw(TEXT)},
        ]
    from pipeline.providers.structured import MODES_OF_KIND

    kind = draw(st.sampled_from(["openai", "openai_compatible", "mistral", "anthropic"]))
    request = ChatRequest(
        model="m",
        messages=messages,
        schema_name=draw(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)),
        json_schema=draw(json_schemas()),
        max_output_tokens=64,
        structured_mode=draw(st.sampled_from(sorted(MODES_OF_KIND[kind]))),
    )
    return kind, request


def _simulated_prompt_tokens(kind: str, request: ChatRequest) -> int:
    """What the simulator bills for the body ``kind``'s adapter sends for ``request``."""
    from pipeline.providers import anthropic as anthropic_adapter
    from pipeline.providers.bounds import schema_parts
    from pipeline.providers.structured import openai_fields
    from pipeline.simulator.protocols import WIRES

    if kind == "anthropic":
        body = anthropic_adapter._params(request)
    elif kind == "mistral":  # the messages as they are, and the response format
        (fmt,) = schema_parts(request, "mistral")
        body = {"model": "m", "messages": request.messages, "response_format": fmt}
    else:  # what the structured mode asks for, prompted schemas in the messages included
        body = {"model": "m", **openai_fields(request)}
    wire = {"openai": "openai", "openai_compatible": "gemini"}.get(kind, kind)
    return WIRES[wire].parse(json.dumps(body).encode()).prompt_tokens  # type: ignore[index]


@settings(max_examples=200, deadline=None, database=None)
@given(bound_requests())
def test_the_input_bound_covers_what_the_simulator_bills_for_any_request(
    case: tuple[str, ChatRequest],
) -> None:
    from pipeline.providers.bounds import input_token_bound

    kind, request = case
    billed = _simulated_prompt_tokens(kind, request)
    assert billed <= input_token_bound(request, kind)
