"""The budget promise under real load: hundreds of calls in flight at once, through the real
openai SDK, against a slow simulator over loopback, in two batches that share one guard,
while the budget runs out midway. The ledger total never exceeds the cap.

The figure it prints (one JSON line: peak in flight, spend against cap) is what the
README quotes; only the promise itself is asserted.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections import Counter
from typing import Any

from pydantic import SecretStr

from pipeline.dispatch import Dispatcher
from pipeline.models import Chunk
from pipeline.policy import BudgetGuard, DispatchSettings, Endpoint, Router
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

TEXT = (
    "Brightwell Logistics GmbH and Nordhafen AG signed a services agreement on 3 March 2025 "
    "in Hamburg. Brightwell will provide warehousing for EUR 48,000 per year."
)
LATENCY_S = (0.4, 0.5)
CAP = 1.6  # a reservation (schema included) is ~$0.005: 300 of them fit
BATCHES, PER_BATCH, CONCURRENCY = 2, 800, 150  # 300 calls may be in flight at once


class Counting:
    """Delegates to the real adapter; counts the calls inside ``complete`` at once."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.in_flight = 0
        self.peak = 0

    async def complete(self, request: ChatRequest) -> ProviderReply:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self.inner.complete(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


def _server_peak(arrivals: list[float], hold_s: float) -> int:
    """Requests the server held at once, at least: each is held ``hold_s`` or longer, so
    all that arrive within ``hold_s`` of one another overlap."""
    arrivals = sorted(arrivals)
    return max(
        (bisect.bisect_left(arrivals, t + hold_s) - i for i, t in enumerate(arrivals)), default=0
    )


def test_spend_stays_under_the_cap_with_300_calls_in_flight_over_the_real_sdk(
    simulator: Any,
) -> None:
    low, high = LATENCY_S
    url = simulator.add_endpoint("eu-a", EndpointProfile(latency_ms=(low * 1000, high * 1000)))
    provider = Counting(
        build_provider(
            "openai",
            EndpointSettings(
                name="eu-a",
                base_url=url,
                api_key=SecretStr("sk-test-key-000"),
                timeout_s=30,
                strict_validation=True,
            ),
        )
    )
    price = Price(1.0, 4.0, 1.0, 128_000, 4096, "t")
    budget = BudgetGuard(CAP)
    spec = get_schema("chunk_summary")
    dispatcher = Dispatcher(
        run_id="run-load",
        router=Router([Endpoint("eu-a", "openai", "eu", "gpt-4.1-mini", price, True, 0)]),
        budget=budget,  # one guard for every batch of the run, as in pipeline.run
        providers={"eu-a": provider},
        schema=spec,
        settings=DispatchSettings(
            instructions=spec.instructions, max_output_tokens=600, concurrency=CONCURRENCY
        ),
    )
    batches = [
        [
            Chunk(
                f"c{b}-{i}", f"d{b}", "eu/a.txt", i, 0, 1, 40, f"{TEXT} Copy {b}-{i}.", ("eu",), "r"
            )
            for i in range(PER_BATCH)
        ]
        for b in range(BATCHES)
    ]

    async def go() -> Any:
        try:
            return await asyncio.gather(*(dispatcher.run_batch(b) for b in batches))
        finally:
            await provider.aclose()

    outcomes = asyncio.run(go())
    results = [r for o in outcomes for r in o.results]
    ledger = [e for o in outcomes for e in o.ledger]
    spend = sum(e.cost_usd for e in ledger)
    server_peak = _server_peak([r.received_at for r in simulator.requests()], low)
    worst = max(e.reserved_usd for e in ledger)
    print(
        json.dumps(
            {
                "figure": "budget_under_load",
                "calls": sum(e.attempt > 0 for e in ledger),
                "peak_in_flight_client": provider.peak,
                "peak_in_flight_server_at_least": server_peak,
                "spend_usd": round(spend, 6),
                "cap_usd": CAP,
                "spend_share_of_cap": round(spend / CAP, 4),
                "worst_case_per_call_usd": round(worst, 6),
                "outcomes": dict(Counter(e.outcome for e in ledger)),
            }
        )
    )
    assert spend <= CAP
    assert budget.spent_usd <= CAP and budget.reserved_usd < 1e-9
    assert provider.peak >= 200 and server_peak >= 200, (provider.peak, server_peak)
    assert {r.status for r in results} >= {"succeeded", "skipped"}, "the budget ran out midway"
    # A chunk whose retry or repair could no longer be afforded fails for the budget.
    assert {r.reason for r in results if r.status != "succeeded"} == {"budget_exhausted"}
    assert len(results) == len({r.chunk_id for r in results}) == BATCHES * PER_BATCH
    # Every chunk that was not sent could not have been afforded: the cap is used up to
    # within one call's worst case.
    assert spend > CAP - worst
