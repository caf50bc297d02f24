"""Routing promises: preflight (context window, structured output) with the reasons recorded,
the strategies (cheapest, ordered, cascade), and pinned model snapshots in the ledger.

Context, order and snapshot tests run the real SDKs against the simulator over loopback;
the cascade's confidence tests use an in-process provider that answers with a scripted
confidence per endpoint (the simulator's answers are deterministic per text, not per
endpoint).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, SecretStr

from pipeline.config import load_config
from pipeline.dispatch import Dispatcher
from pipeline.errors import ConfigError
from pipeline.models import Chunk, LedgerEntry, Result, Usage
from pipeline.policy import (
    BudgetGuard,
    Cascade,
    Cheapest,
    DispatchSettings,
    Endpoint,
    Ordered,
    Router,
    Strategy,
    strategy_from_config,
)
from pipeline.prices import Price
from pipeline.providers import (
    ChatRequest,
    EndpointSettings,
    Provider,
    ProviderReply,
    build_provider,
)
from pipeline.simulator import EndpointProfile
from schemas import get_schema
from schemas._spec import SchemaSpec
from tests.conftest import sample_config_data, write_config

TEXT = (
    "Brightwell Logistics GmbH and Nordhafen AG signed a services agreement on 3 March 2025 "
    "in Hamburg. Brightwell will provide warehousing for EUR 48,000 per year. Either party may "
    "terminate with 90 days notice. Personal data is processed under the GDPR. "
)


def _chunk(text: str = TEXT, n: int = 0, regions: tuple[str, ...] = ("eu",)) -> Chunk:
    return Chunk(
        f"chunk-{n}", "doc", "eu/a.txt", n, 0, len(text), len(text) // 4, text, regions, "eu/**"
    )


@dataclass
class Spec:
    """One endpoint of a test: price, limits, and (for the simulator) its profile."""

    name: str
    input_per_mtok: float = 0.1
    window: int = 128_000
    structured: bool = True
    region: str = "eu"
    kind: str = "openai"
    model: str | None = None
    profile: EndpointProfile = field(default_factory=EndpointProfile)

    def endpoint(self, order: int) -> Endpoint:
        price = Price(self.input_per_mtok, self.input_per_mtok * 4, 0.0, self.window, 4096, "t")
        model = self.model or f"model-{self.name}"
        return Endpoint(self.name, self.kind, self.region, model, price, self.structured, order)


def _dispatcher(
    providers: dict[str, Provider],
    specs: Sequence[Spec],
    *,
    strategy: Strategy | None = None,
    schema: SchemaSpec | None = None,
    cap: float = 10.0,
    **settings: Any,
) -> Dispatcher:
    spec = schema or get_schema("chunk_summary")

    async def no_sleep(_: float) -> None:
        return None

    return Dispatcher(
        run_id="run-test",
        router=Router(s.endpoint(i) for i, s in enumerate(specs)),
        budget=BudgetGuard(cap),
        providers=providers,
        schema=spec,
        settings=DispatchSettings(
            instructions=spec.instructions,
            max_output_tokens=600,
            strategy=strategy or Cheapest(),
            **settings,
        ),
        sleep=no_sleep,
    )


def _simulated(simulator: Any, specs: Sequence[Spec]) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for s in specs:
        url = simulator.add_endpoint(s.name, s.profile)
        providers[s.name] = build_provider(
            s.kind,
            EndpointSettings(
                name=s.name,
                base_url=url,
                api_key=SecretStr("sk-test-key-000"),
                timeout_s=10,
                strict_validation=True,
            ),
        )
    return providers


def _run(dispatcher: Dispatcher, chunks: Sequence[Chunk]) -> tuple[list[Result], list[LedgerEntry]]:
    async def go() -> Any:
        try:
            return await dispatcher.run_batch(chunks)
        finally:
            for p in dispatcher.providers.values():
                await p.aclose()

    out = asyncio.run(go())
    return sorted(out.results, key=lambda r: r.chunk_id), out.ledger


def _excluded(result: Result) -> list[tuple[str, str]]:
    return [(x["endpoint"], x["reason"]) for x in json.loads(result.excluded or "[]")]


# -- preflight ------------------------------------------------------------------------------


def test_chunk_too_long_for_the_cheap_window_goes_to_the_bigger_model(simulator: Any) -> None:
    specs = [Spec("eu-cheap", 0.05, window=1500), Spec("eu-big", 1.0, window=128_000)]
    dispatcher = _dispatcher(_simulated(simulator, specs), specs)
    short, long = _chunk(TEXT, 0), _chunk(TEXT * 12, 1)  # ~80 vs ~900 chunk tokens
    (r_short, r_long), _ = _run(dispatcher, [short, long])
    assert (r_short.status, r_short.provider, r_short.excluded) == ("succeeded", "eu-cheap", None)
    assert (r_long.status, r_long.provider) == ("succeeded", "eu-big")
    assert _excluded(r_long) == [("eu-cheap/model-eu-cheap", "context_window")]
    assert len(simulator.requests("eu-cheap")) == 1 and len(simulator.requests("eu-big")) == 1


def test_chunk_that_fits_no_window_fails_context_exceeded_without_a_call(simulator: Any) -> None:
    specs = [
        Spec("eu-a", 0.05, window=1500),
        Spec("eu-b", 1.0, window=3000),
        Spec("eu-plain", 0.01, structured=False),  # would fit, but cannot enforce the schema
        Spec("us-huge", 0.01, region="us"),  # fits, but outside the chunk's regions
    ]
    dispatcher = _dispatcher(_simulated(simulator, specs), specs)
    (result,), (entry,) = _run(dispatcher, [_chunk(TEXT * 40)])  # ~3,000 chunk tokens
    assert (result.status, result.reason, result.attempts) == ("failed", "context_exceeded", 0)
    assert (entry.outcome, entry.cost_usd, entry.provider) == ("context_exceeded", 0.0, None)
    assert _excluded(result) == [
        ("eu-a/model-eu-a", "context_window"),
        ("eu-b/model-eu-b", "context_window"),
        ("eu-plain/model-eu-plain", "no_structured_output"),
    ]
    assert simulator.requests() == []


def test_only_unstructured_endpoints_is_no_route_with_the_reason(simulator: Any) -> None:
    specs = [Spec("eu-plain", 0.01, structured=False)]
    dispatcher = _dispatcher(_simulated(simulator, specs), specs)
    (result,), _ = _run(dispatcher, [_chunk()])
    assert (result.status, result.reason) == ("failed", "no_route")
    assert _excluded(result) == [("eu-plain/model-eu-plain", "no_structured_output")]
    assert simulator.requests() == []


# -- strategies -----------------------------------------------------------------------------


def test_ordered_strategy_follows_the_config_order_not_the_price(simulator: Any) -> None:
    specs = [
        Spec("eu-mid", 0.5, profile=EndpointProfile(rate_500=1.0)),
        Spec("eu-dear", 2.0),
        Spec("eu-cheap", 0.05),
    ]
    dispatcher = _dispatcher(
        _simulated(simulator, specs), specs, strategy=Ordered(), retries_per_endpoint=0
    )
    (result,), ledger = _run(dispatcher, [_chunk()])
    assert [(e.provider, e.outcome) for e in ledger] == [
        ("eu-mid", "server_error"),
        ("eu-dear", "ok"),
    ]
    assert result.provider == "eu-dear"
    assert simulator.requests("eu-cheap") == []


def test_cheapest_strategy_ignores_the_config_order(simulator: Any) -> None:
    specs = [Spec("eu-dear", 2.0), Spec("eu-cheap", 0.05)]
    dispatcher = _dispatcher(_simulated(simulator, specs), specs, strategy=Cheapest())
    (result,), _ = _run(dispatcher, [_chunk()])
    assert result.provider == "eu-cheap" and simulator.requests("eu-dear") == []


def test_cascade_escalates_after_an_invalid_answer_and_its_repair(simulator: Any) -> None:
    specs = [
        Spec("eu-small", 0.05, profile=EndpointProfile(invalid_first=2)),
        Spec("eu-large", 1.0),
        Spec("eu-xl", 5.0),
    ]
    dispatcher = _dispatcher(_simulated(simulator, specs), specs, strategy=Cascade())
    (result,), ledger = _run(dispatcher, [_chunk()])
    assert [(e.provider, e.outcome) for e in ledger] == [
        ("eu-small", "invalid_output"),
        ("eu-small", "invalid_output"),
        ("eu-large", "ok"),
    ]
    assert (result.status, result.reason, result.provider) == ("succeeded", None, "eu-large")
    assert simulator.requests("eu-xl") == []


class Rated(BaseModel):
    """A test-only answer with a confidence the model reports about itself."""

    summary: str
    confidence: float = Field(ge=0, le=1)


RATED = SchemaSpec("rated_summary", "1", Rated, "Summarise, and say how sure you are.")


class Scripted:
    """An in-process provider answering ``confidence`` per model (None: schema-invalid).

    Each endpoint counts as one model; ``calls`` lists the models asked, in order.
    """

    name = "scripted"

    def __init__(self, confidence: dict[str, float | None], calls: list[str]) -> None:
        self.confidence = confidence
        self.calls = calls

    async def complete(self, request: ChatRequest) -> ProviderReply:
        self.calls.append(request.model)
        value = self.confidence[request.model]
        body = {"summary": "s", "confidence": value} if value is not None else {"summary": 1}
        return ProviderReply(
            text=json.dumps(body),
            finish_reason="stop",
            usage=Usage(100, 20),
            model_reported=request.model,
        )

    async def aclose(self) -> None:
        return None


def _cascade(
    confidence: dict[str, float | None],
) -> tuple[Dispatcher, list[str]]:
    calls: list[str] = []
    specs = [Spec(name, price) for name, price in zip(confidence, (0.05, 0.5, 5.0), strict=False)]
    providers: dict[str, Provider] = {
        s.name: Scripted({f"model-{k}": v for k, v in confidence.items()}, calls) for s in specs
    }
    dispatcher = _dispatcher(providers, specs, strategy=Cascade("confidence", 0.7), schema=RATED)
    return dispatcher, calls


def test_cascade_escalates_on_low_confidence_until_an_answer_is_confident() -> None:
    dispatcher, calls = _cascade({"small": 0.3, "large": 0.9, "xl": 0.99})
    (result,), ledger = _run(dispatcher, [_chunk()])
    assert calls == ["model-small", "model-large"], "xl is never asked once large is sure"
    assert (result.status, result.reason, result.provider) == ("succeeded", None, "large")
    assert json.loads(result.output or "{}")["confidence"] == 0.9
    assert [e.outcome for e in ledger] == ["ok", "ok"] and result.attempts == 2
    assert result.cost_usd == pytest.approx(sum(e.cost_usd for e in ledger))


def test_cascade_keeps_the_dearest_valid_answer_when_no_tier_is_confident() -> None:
    dispatcher, calls = _cascade({"small": 0.2, "large": 0.4, "xl": None})
    (result,), ledger = _run(dispatcher, [_chunk()])
    assert calls == ["model-small", "model-large", "model-xl", "model-xl"]  # xl: + its repair
    assert (result.status, result.reason, result.provider) == (
        "succeeded",
        "low_confidence",
        "large",
    )
    assert json.loads(result.output or "{}")["confidence"] == 0.4
    assert "large" in (result.error or "") and "0.4" in (result.error or "")
    assert [e.outcome for e in ledger] == ["ok", "ok", "invalid_output", "invalid_output"]


def test_cheapest_strategy_accepts_a_low_confidence_answer() -> None:
    calls: list[str] = []
    specs = [Spec("small", 0.05), Spec("large", 0.5)]
    conf = {"model-small": 0.1, "model-large": 0.9}
    providers: dict[str, Provider] = {s.name: Scripted(conf, calls) for s in specs}
    dispatcher = _dispatcher(providers, specs, strategy=Cheapest(), schema=RATED)
    (result,), _ = _run(dispatcher, [_chunk()])
    assert calls == ["model-small"] and result.reason is None


def test_cascade_config_is_checked_against_the_schema(tmp_path: Path) -> None:
    data = sample_config_data()
    data["corpus"].pop("residency_manifest", None)  # not what this test is about
    data["routing"] = {"strategy": "cheapest", "cascade": {"confidence_field": "confidence"}}
    with pytest.raises(ConfigError, match=r"routing: .*cascade settings need strategy 'cascade'"):
        load_config(write_config(tmp_path, data))
    data["routing"] = {"strategy": "cascade", "cascade": {"confidence_field": "confidence"}}
    cfg = load_config(write_config(tmp_path, data))
    fields = get_schema(cfg.task.schema_name).model.model_fields
    with pytest.raises(ConfigError, match=r"routing\.cascade\.confidence_field: 'confidence'"):
        strategy_from_config(cfg.routing, fields)
    assert strategy_from_config(cfg.routing, Rated.model_fields) == Cascade("confidence", 0.7)
    data["routing"] = {"strategy": "fastest"}
    with pytest.raises(
        ConfigError, match=r"routing\.strategy: .*'cheapest', 'ordered' or 'cascade'"
    ):
        load_config(write_config(tmp_path, data))


# -- pinned snapshots -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "model"),
    [
        ("openai", "gpt-4.1-mini-2025-04-14"),
        ("anthropic", "claude-sonnet-4-20250514"),
        ("mistral", "mistral-small-2503"),
    ],
)
def test_a_dated_snapshot_is_what_is_sent_and_what_is_reported_is_ledgered(
    simulator: Any, kind: str, model: str
) -> None:
    spec = Spec("eu-x", 0.1, kind=kind, model=model, profile=EndpointProfile(protocol=kind))  # type: ignore[arg-type]
    dispatcher = _dispatcher(_simulated(simulator, [spec]), [spec])
    (result,), (entry,) = _run(dispatcher, [_chunk()])
    assert result.status == "succeeded" and result.model == model
    assert [r.model for r in simulator.requests()] == [model]
    assert (entry.model, entry.model_reported) == (model, model)


def test_the_ledger_keeps_the_reported_snapshot_next_to_the_alias_asked_for() -> None:
    class Resolving(Scripted):
        async def complete(self, request: ChatRequest) -> ProviderReply:
            reply = await super().complete(request)
            return ProviderReply(
                text=json.dumps({"summary": "s", "confidence": 1.0}),
                finish_reason="stop",
                usage=reply.usage,
                model_reported="gpt-4o-2024-08-06",
            )

    calls: list[str] = []
    specs = [Spec("us-a", 0.1, model="gpt-4o", region="eu")]
    providers: dict[str, Provider] = {"us-a": Resolving({"gpt-4o": 1.0}, calls)}
    dispatcher = _dispatcher(providers, specs, schema=RATED)
    (result,), (entry,) = _run(dispatcher, [_chunk()])
    assert calls == ["gpt-4o"] and result.model == "gpt-4o"
    assert (entry.model, entry.model_reported) == ("gpt-4o", "gpt-4o-2024-08-06")
