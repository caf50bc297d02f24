"""Residency decisions, candidate ordering and the budget guard under concurrency."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config_sections import CorpusConfig
from pipeline.models import Chunk, LedgerEntry, Usage
from pipeline.policy import BudgetGuard, Endpoint, Hold, Residency, Router, Shortfall
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


def test_a_document_reservation_takes_from_both_caps_or_from_neither() -> None:
    guard = BudgetGuard(cap_usd=1.0, document_cap_usd=0.3)

    async def go() -> None:
        a = await guard.claim(0.2, "doc-a")
        assert isinstance(a, Hold) and guard.reserved_usd == pytest.approx(0.2)
        assert guard.try_reserve(0.2, "doc-a") is None  # doc-a: 0.2 held + 0.2 > 0.3
        assert guard.reserved_usd == pytest.approx(0.2), "a refusal reserves nothing"
        guard.settle(a, 0.05)
        b = await guard.claim(0.2, "doc-a")  # 0.05 spent + 0.2 fits doc-a's 0.3
        assert isinstance(b, Hold)
        # 0.05 + 0.3 > 0.3 even if b settled at 0: refused at once, with the scope.
        assert await guard.claim(0.3, "doc-a") == Shortfall("document", pytest.approx(0.05))
        assert isinstance(await guard.claim(0.25, "doc-b"), Hold), "doc-b has its own cap"
        assert await guard.claim(0.96) == Shortfall("run", pytest.approx(0.5))
        guard.settle(b, 0.2)
        assert guard.document_spent_usd("doc-a") == pytest.approx(0.25)

    asyncio.run(asyncio.wait_for(go(), timeout=5))


def test_run_and_document_caps_hold_with_hundreds_of_calls_over_many_documents() -> None:
    guard = BudgetGuard(cap_usd=0.05, document_cap_usd=0.008)
    rng = random.Random(11)
    spent: dict[str, float] = {}

    async def call(doc: str) -> None:
        worst = rng.uniform(0.0005, 0.002)
        hold = await guard.reserve(worst, doc)
        if hold is None:
            return
        await asyncio.sleep(rng.uniform(0, 0.01))
        actual = worst * rng.uniform(0.1, 1.0)
        spent[doc] = spent.get(doc, 0.0) + actual
        guard.settle(hold, actual)

    async def go() -> None:
        await asyncio.gather(*(call(f"doc-{i % 9}") for i in range(400)))

    asyncio.run(go())
    assert sum(spent.values()) <= 0.05
    assert max(spent.values()) <= 0.008
    assert guard.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert sum(spent.values()) > 0.03


def test_a_zero_cap_refuses_everything() -> None:
    guard = BudgetGuard(cap_usd=0.0)
    assert guard.try_reserve(1e-9) is None
    assert asyncio.run(guard.claim(1e-9)) == Shortfall("run", 0.0)
    with pytest.raises(ValueError, match="must not be negative"):
        BudgetGuard(cap_usd=-1.0)


def _spend(run_id: str, cost: float, days_ago: float) -> LedgerEntry:
    return LedgerEntry(
        run_id=run_id,
        chunk_id="c",
        attempt=1,
        provider="p",
        model="m",
        region="eu",
        mode="sync",
        started_at=time.time() - days_ago * 86_400,
        latency_ms=1.0,
        input_tokens=1,
        output_tokens=1,
        cached_input_tokens=0,
        cache_write_tokens=0,
        cost_usd=cost,
        reserved_usd=cost,
        outcome="ok",
        http_status=200,
        error=None,
    )


def _open_run(tmp_path: Path, earlier: dict[str, list[LedgerEntry]], **budget: Any) -> Any:
    """Write ``earlier`` runs' ledger rows, open a new run; return (cap, results, requests)."""
    from pipeline.config import load_config
    from pipeline.opening import Opening, new_run_id
    from pipeline.run import Run
    from pipeline.store import Store
    from tests.conftest import sample_config_data, write_config

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = sample_config_data()
    data["budget"] = budget
    data["corpus"].pop("residency_manifest", None)  # the chunk below carries its regions
    cfg = load_config(write_config(tmp_path, data))
    store = Store(cfg.output.root)
    for run_id, entries in earlier.items():
        store.write_rows("ledger", run_id, entries)
    eu = Chunk(
        "c1",
        "d",
        "eu/a.txt",
        0,
        0,
        40,
        10,
        "Acme GmbH pays EUR 100 on 3 May 2025.",
        ("eu",),
        "eu/**",
    )

    async def go() -> Any:
        async with Run.open(cfg, Opening.new(new_run_id(), flow="test")) as run:
            outcome = await run.dispatcher.run_batch([eu])
            return run.budget.cap_usd, outcome.results

    return asyncio.run(go())


def test_monthly_cap_leaves_a_run_what_the_last_30_days_left(tmp_path: Path, sim_env: Any) -> None:
    earlier = {
        "20261101-020000-aaaaaa": [
            _spend("20261101-020000-aaaaaa", 0.3, 2),
            _spend("20261101-020000-aaaaaa", 0.4, 20),
        ],
        "20260901-020000-bbbbbb": [_spend("20260901-020000-bbbbbb", 5.0, 45)],  # outside
    }
    cap, (result,) = _open_run(tmp_path, earlier, run_usd=0.5, monthly_usd=1.0)
    assert cap == pytest.approx(0.3)  # min(0.5, 1.0 - 0.7)
    assert result.status == "succeeded"
    cap, _ = _open_run(tmp_path / "2", {}, run_usd=0.5, monthly_usd=1.0)
    assert cap == pytest.approx(0.5), "nothing spent in the window: the run cap binds"


def test_monthly_cap_spent_skips_every_chunk_without_a_call(tmp_path: Path, sim_env: Any) -> None:
    earlier = {"20261101-020000-aaaaaa": [_spend("20261101-020000-aaaaaa", 1.2, 3)]}
    cap, (result,) = _open_run(tmp_path, earlier, run_usd=0.5, monthly_usd=1.0)
    assert cap == 0.0
    assert (result.status, result.reason, result.attempts) == ("skipped", "budget_exhausted", 0)
    assert sim_env.requests() == []


def test_a_resumed_run_counts_what_each_document_spent_before() -> None:
    guard = BudgetGuard(10.0, spent_usd=0.8, document_cap_usd=1.0, document_spent_usd={"d1": 0.8})
    assert guard.try_reserve(0.3, document="d1") is None  # 0.8 + 0.3 > 1.0
    assert guard.try_reserve(0.3, document="d2") is not None  # d2 starts from 0
    assert guard.try_reserve(0.2, document="d1") is not None


def test_a_waiting_reservation_parks_without_polling_and_wakes_on_settle() -> None:
    """Close to the cap a caller waits for calls in flight; it costs the loop nothing
    (no timer ticks while parked) and is woken by ``settle`` even from another thread."""
    import threading

    guard = BudgetGuard(cap_usd=1.0)

    async def go() -> None:
        first = await guard.reserve(0.8)
        assert first is not None
        waiting = asyncio.ensure_future(guard.reserve(0.5))  # fits only once first settles
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        assert not waiting.done()
        assert not loop._scheduled, "a parked reservation schedules no polling timer"  # type: ignore[attr-defined]
        threading.Thread(target=guard.settle, args=(first, 0.1)).start()
        second = await asyncio.wait_for(waiting, timeout=10)
        assert second is not None and guard.reserved_usd == pytest.approx(0.5)

    asyncio.run(go())


def test_a_cancelled_waiter_leaves_no_trace() -> None:
    guard = BudgetGuard(cap_usd=1.0)

    async def go() -> None:
        first = await guard.reserve(0.9)
        assert first is not None
        waiting = asyncio.ensure_future(guard.reserve(0.5))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert guard._waiters == []  # type: ignore[attr-defined]
        guard.settle(first, 0.9)
        assert await guard.reserve(0.2) is None, "0.9 spent: 0.2 can never fit"

    asyncio.run(go())
