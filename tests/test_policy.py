"""Residency decisions, candidate ordering and the budget guard under concurrency."""

from __future__ import annotations

import asyncio
import random

import pytest

from pipeline.config import CorpusConfig
from pipeline.models import Chunk, Usage
from pipeline.policy import BudgetGuard, Endpoint, Residency, Router
from pipeline.prices import Price, load_price_table


def _corpus(**kw: object) -> CorpusConfig:
    return CorpusConfig.model_validate({"path": ".", **kw})


def _chunk(regions: tuple[str, ...]) -> Chunk:
    return Chunk("c", "d", "p", 0, 0, 10, 100, "x" * 10, regions, "test")


def _endpoint(
    provider: str,
    region: str,
    inp: float,
    out: float,
    window: int = 100_000,
    order: int = 0,
    structured: bool = True,
) -> Endpoint:
    price = Price(inp, out, inp, window, 4096, "test")
    return Endpoint(provider, "openai", region, f"m-{provider}", price, structured, order)


def test_first_matching_rule_wins_and_default_is_explicit() -> None:
    rules = Residency.from_config(
        _corpus(
            residency=[
                {"match": "eu/secret/**", "regions": ["on-prem"]},
                {"match": "eu/**", "regions": ["eu"]},
            ]
        )
    )
    assert rules.decide("eu/secret/a.txt").regions == ("on-prem",)
    assert rules.decide("eu/a/b.md").rule == "eu/**"
    assert rules.decide("us/a.md").regions == ()
    assert rules.decide("us/a.md").rule == "default:deny"
    allow = Residency.from_config(_corpus(residency_default=["us"]))
    assert allow.decide("x.md").regions == ("us",)


def test_candidates_stay_in_region_cheapest_first_and_fit_the_window() -> None:
    router = Router(
        [
            _endpoint("eu-big", "eu", 2.0, 8.0, order=0),
            _endpoint("us-cheap", "us", 0.01, 0.01, order=1),
            _endpoint("eu-cheap", "eu", 0.1, 0.4, order=2),
            _endpoint("eu-small-window", "eu", 0.01, 0.01, window=1000, order=3),
            _endpoint("eu-no-schema", "eu", 0.0, 0.0, structured=False, order=4),
        ]
    )
    names = [
        e.provider
        for e in router.candidates(_chunk(("eu",)), prompt_tokens=900, max_output_tokens=500)
    ]
    assert names == ["eu-cheap", "eu-big"]
    router.disable("eu-cheap")
    assert [
        e.provider
        for e in router.candidates(_chunk(("eu",)), prompt_tokens=10, max_output_tokens=10)
    ] == ["eu-small-window", "eu-big"]
    assert router.candidates(_chunk(()), prompt_tokens=10, max_output_tokens=10) == []


def test_price_table_costs() -> None:
    price = load_price_table()["gpt-4.1-mini"]
    assert price.cost_usd(Usage(1_000_000, 0, 0)) == pytest.approx(0.40)
    assert price.cost_usd(Usage(1_000_000, 1_000_000, 1_000_000)) == pytest.approx(0.10 + 1.60)
    assert price.worst_case_usd(1000, 1000) == pytest.approx((1000 * 0.40 + 1000 * 1.60) / 1e6)


def test_budget_refuses_what_cannot_fit_when_nothing_is_in_flight() -> None:
    guard = BudgetGuard(cap_usd=1.0)

    async def go() -> None:
        hold = await guard.reserve(0.6)
        assert hold is not None
        assert guard.try_reserve(0.5) is None
        guard.settle(hold, 0.2)
        assert await guard.reserve(0.9) is None  # 0.2 spent + 0.9 > 1.0 and nothing in flight
        assert await guard.reserve(0.8) is not None

    asyncio.run(go())


def test_budget_holds_with_hundreds_of_calls_in_flight() -> None:
    """300 concurrent calls whose actual cost is random up to the reservation: spend <= cap."""
    guard = BudgetGuard(cap_usd=0.05)
    rng = random.Random(7)
    spent: list[float] = []

    async def call() -> None:
        worst = rng.uniform(0.0005, 0.002)
        hold = await guard.reserve(worst)
        if hold is None:
            return
        await asyncio.sleep(rng.uniform(0, 0.01))
        actual = worst * rng.uniform(0.1, 1.0)
        spent.append(actual)
        guard.settle(hold, actual)

    async def go() -> None:
        await asyncio.gather(*(call() for _ in range(300)))

    asyncio.run(go())
    assert sum(spent) <= 0.05
    assert guard.spent_usd == pytest.approx(sum(spent))
    assert guard.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert sum(spent) > 0.03, "the guard should let most of the budget be used"
