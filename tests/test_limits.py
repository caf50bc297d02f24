"""The endpoint gate: sliding-window quotas, pacing, provider-reported limits, pauses, cooldown."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from pipeline.dispatch import Dispatcher
from pipeline.models import Chunk
from pipeline.policy import BudgetGuard, DispatchSettings, Endpoint, EndpointGate, Router
from pipeline.prices import Price
from pipeline.providers import EndpointSettings, build_provider
from pipeline.providers.base import RateLimitInfo
from pipeline.simulator import EndpointProfile
from schemas import get_schema


class FakeTime:
    """A clock that only moves when the (single) waiter sleeps: an exact virtual timeline."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-6)
        await asyncio.sleep(0)


def _gate(t: FakeTime, **kw: Any) -> EndpointGate:
    return EndpointGate(clock=t.clock, sleep=t.sleep, **kw)


def _admit_times(gate: EndpointGate, t: FakeTime, n: int, tokens: int = 1) -> list[float]:
    """When each of ``n`` back-to-back requests (a client always ready to send) is admitted."""
    times: list[float] = []

    async def go() -> None:
        for _ in range(n):
            async with gate.slot(tokens):
                times.append(t.now)

    asyncio.run(go())
    return times


def _max_in_window(times: list[float], weights: list[int] | None = None) -> int:
    weights = weights or [1] * len(times)
    return max(
        sum(w for t2, w in zip(times, weights, strict=True) if t <= t2 < t + 60) for t in times
    )


def test_requests_are_paced_and_never_exceed_rpm_in_any_minute() -> None:
    t = FakeTime()
    times = _admit_times(_gate(t, rpm=600), t, 1500)
    assert _max_in_window(times) <= 600
    span = times[-1] - times[0]
    rate = (len(times) - 1) / span * 60
    assert rate >= 0.97 * 600, f"paced rate {rate:.0f}/min should sit at the limit"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Paced: never a whole minute's quota up front and then a minute-long stall (the
    # window only holds back the few requests of the initial burst, once a minute).
    assert max(gaps) < 1.5, "pacing, not bursts followed by a minute's wait"
    assert sum(g > 0.5 for g in gaps) <= 3


def test_tokens_per_minute_bind_when_requests_are_large() -> None:
    t = FakeTime()
    times = _admit_times(_gate(t, rpm=1000, tpm=20_000), t, 40, tokens=1_000)
    assert _max_in_window(times, [1000] * 40) <= 20_000
    assert times[20] - times[0] >= 59, "the 21st request waits for the window to admit it"


def test_provider_reported_exhaustion_pauses_the_endpoint() -> None:
    t = FakeTime()
    gate = _gate(t)
    gate.observe(RateLimitInfo(remaining_requests=0, reset_requests_s=7.5))
    start = t.now
    (admitted,) = _admit_times(gate, t, 1)
    assert admitted - start >= 7.5
    gate.observe(RateLimitInfo(remaining_requests=3, reset_requests_s=50))
    (again,) = _admit_times(gate, t, 1)
    assert again - admitted < 1e-3, "remaining above zero does not pause"


def test_retry_after_pauses_everyone_and_failures_cool_the_endpoint_down() -> None:
    t = FakeTime()
    gate = _gate(t, cooldown_after=3, cooldown_s=30)
    gate.record_failure(retry_after=4)
    (admitted,) = _admit_times(gate, t, 1)
    assert admitted - 1000.0 >= 4
    gate.record_failure()
    gate.record_success()  # a success in between resets the count
    gate.record_failure()
    gate.record_failure()
    assert not gate.cooling()
    gate.record_failure()
    assert gate.cooling()
    t.now += 30.1
    assert not gate.cooling()


def test_concurrency_cap_holds() -> None:
    gate = EndpointGate(max_concurrency=3)
    inside = peak = 0

    async def one() -> None:
        nonlocal inside, peak
        async with gate.slot(1):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    async def go() -> None:
        await asyncio.gather(*(one() for _ in range(20)))

    asyncio.run(go())
    assert peak == 3


def test_a_failing_endpoint_cools_down_and_traffic_moves_on(simulator: Any) -> None:
    async def no_sleep(_: float) -> None:
        return None

    dispatcher, providers = _dispatcher(
        simulator,
        [("eu-down", EndpointProfile(rate_500=1.0), 0.1), ("eu-up", EndpointProfile(), 0.2)],
        sleep=no_sleep,
        retries_per_endpoint=1,
        cooldown_after=4,
        cooldown_s=600,
    )
    out = _run_chunks(dispatcher, providers, 10)
    assert all(r.status == "succeeded" and r.provider == "eu-up" for r in out.results)
    # Two chunks spend 2 attempts each at eu-down, then it rests; the other eight skip it.
    assert len(simulator.requests("eu-down")) == 4
    assert dispatcher.gate("eu-down").stats.cooldowns == 1


@pytest.mark.parametrize("rpm", [60, 3000])
def test_window_wait_is_exact(rpm: int) -> None:
    t = FakeTime()
    gate = _gate(t, rpm=rpm)
    times = _admit_times(gate, t, rpm + 1)
    assert times[-1] - times[0] >= 60 - 1e-6 or rpm / 60 < 1


def test_drive_overlaps_batches_and_cancels_cleanly() -> None:
    from pipeline.batches import Batch, drive

    running = peak = 0
    started: list[str] = []

    async def process(batch: Batch) -> None:
        nonlocal running, peak
        started.append(batch.batch_id)
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.05 if batch.batch_id != "b3" else 10)
        finally:
            running -= 1

    batches = [Batch(f"b{i}", [], []) for i in range(6)]

    async def go() -> None:
        await asyncio.wait_for(drive(iter(batches), process, parallel=2), timeout=0.5)

    with pytest.raises(TimeoutError):
        asyncio.run(go())
    assert peak == 2
    assert running == 0, "a cancelled drive leaves no batch running"
    assert started[:4] == ["b0", "b1", "b2", "b3"]


def _dispatcher(
    simulator: Any,
    specs: list[tuple[str, EndpointProfile, float]],
    *,
    gates: dict[str, EndpointGate] | None = None,
    sleep: Any = asyncio.sleep,
    **settings: Any,
) -> tuple[Dispatcher, Any]:
    """A dispatcher over simulated EU endpoints ``(name, profile, input price)``, one at a time."""
    from pydantic import SecretStr

    spec = get_schema("chunk_summary")
    providers, endpoints = {}, []
    for i, (name, profile, price) in enumerate(specs):
        url = simulator.add_endpoint(name, profile)
        endpoint_settings = EndpointSettings(
            name=name,
            base_url=url,
            api_key=SecretStr("sk-test-0000"),
            timeout_s=10,
            strict_validation=True,
        )
        providers[name] = build_provider("openai", endpoint_settings)
        price_row = Price(price, 1.0, price, 128_000, 4096, "t")
        endpoints.append(Endpoint(name, "openai", "eu", "gpt-4.1-mini", price_row, True, i))
    dispatch = {"max_output_tokens": 400, "concurrency": 1, "backoff_initial_s": 0.01} | settings
    dispatcher = Dispatcher(
        run_id="r",
        router=Router(endpoints),
        budget=BudgetGuard(10.0),
        providers=providers,
        schema=spec,
        gates=gates,
        sleep=sleep,
        settings=DispatchSettings(instructions=spec.instructions, **dispatch),
    )
    return dispatcher, providers


def _two_endpoint_dispatcher(simulator: Any, prices: tuple[float, float]) -> tuple[Dispatcher, Any]:
    specs = [("eu-a", EndpointProfile(), prices[0]), ("eu-b", EndpointProfile(), prices[1])]
    gates = {name: EndpointGate(rpm=600) for name, _, _ in specs}  # burst of 10, then 10/s
    return _dispatcher(simulator, specs, gates=gates, concurrency=8)


def _run_chunks(dispatcher: Dispatcher, providers: Any, n: int) -> Any:
    text = "Vantrel Systems B.V. renews its hosting order with Datahaven for EUR 2,400 a month."
    chunks = [
        Chunk(f"c{i}", "d", "eu/a.txt", i, 0, 10, 30, f"{text} Item {i}.", ("eu",), "eu/**")
        for i in range(n)
    ]

    async def go() -> Any:
        try:
            return await dispatcher.run_batch(chunks)
        finally:
            for p in providers.values():
                await p.aclose()

    return asyncio.run(go())


def test_equally_cheap_endpoints_share_the_load(simulator: Any) -> None:
    dispatcher, providers = _two_endpoint_dispatcher(simulator, (0.4, 0.4))
    out = _run_chunks(dispatcher, providers, 30)
    assert all(r.status == "succeeded" for r in out.results)
    a, b = len(simulator.requests("eu-a")), len(simulator.requests("eu-b"))
    assert a >= 10 and b >= 10, (a, b)


def test_a_cheaper_endpoint_is_queued_for_not_bypassed(simulator: Any) -> None:
    dispatcher, providers = _two_endpoint_dispatcher(simulator, (0.1, 0.4))
    out = _run_chunks(dispatcher, providers, 15)
    assert all(r.status == "succeeded" and r.provider == "eu-a" for r in out.results)
    assert simulator.requests("eu-b") == []


def _single(simulator: Any, profile: EndpointProfile, **settings: Any) -> tuple[Dispatcher, Any]:
    return _dispatcher(simulator, [("only", profile, 0.4)], **settings)


def test_rate_limits_pause_but_never_cool_an_endpoint_down(simulator: Any) -> None:
    profile = EndpointProfile(script=["rate_limited"] * 4, retry_after_s=0)
    dispatcher, providers = _single(simulator, profile, cooldown_after=2, retries_per_endpoint=5)
    out = _run_chunks(dispatcher, providers, 1)
    assert [e.outcome for e in out.ledger] == ["rate_limited"] * 4 + ["ok"]
    assert dispatcher.gate("only").stats.cooldowns == 0
    assert dispatcher.gate("only").stats.pauses >= 1


def test_when_every_allowed_endpoint_rests_a_chunk_waits_instead_of_failing(simulator: Any) -> None:
    profile = EndpointProfile(script=["server_error", "server_error"])
    dispatcher, providers = _single(
        simulator, profile, cooldown_after=2, cooldown_s=0.3, retries_per_endpoint=1
    )
    out = _run_chunks(dispatcher, providers, 2)
    first, second = sorted(out.results, key=lambda r: r.chunk_id)
    assert (first.status, first.reason) == ("failed", "server_error")
    assert dispatcher.gate("only").stats.cooldowns == 1
    assert second.status == "succeeded", "the second chunk waited out the cooldown"
    assert not any(e.outcome == "no_route" for e in out.ledger)


def test_our_window_forgets_a_request_after_the_provider_does() -> None:
    from pipeline.policy.limits import ARRIVAL_GUARD_S

    t = FakeTime()
    times = _admit_times(_gate(t, tpm=10_000), t, 12, tokens=1_000)  # 9 fit (1% headroom)
    assert times[9] - times[0] >= 60 + ARRIVAL_GUARD_S
