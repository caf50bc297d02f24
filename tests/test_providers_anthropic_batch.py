"""The Anthropic adapter's batch methods: the real SDK (strict) against the simulator's
Message Batches API, on the simulator's clock."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline import errors
from pipeline.models import Usage
from pipeline.providers import EndpointSettings, build_provider
from pipeline.providers.anthropic import AnthropicProvider
from pipeline.providers.batch import BatchLine, LineResult, supports_batch
from pipeline.simulator import EndpointProfile, SimulatorServer
from tests.test_providers_common import summary_request

T = 10.0  # batch turnaround on the test's clock: lines of 4 are done at +3, +5, +7, +9
KEY = "sk-" + "ant-test-key-000"  # assembled: no key-shaped literal in the tree


@pytest.fixture
def sim(clocked_simulator: SimulatorServer) -> SimulatorServer:
    return clocked_simulator


def run(
    sim: SimulatorServer,
    scenario: Callable[[AnthropicProvider], Awaitable[Any]],
    key: str = KEY,
    **profile: Any,
) -> Any:
    """``scenario`` with a fresh adapter of endpoint ``claude`` (``profile``), then closed."""
    url = sim.add_endpoint(
        "claude", EndpointProfile(protocol="anthropic", batch_turnaround_s=T, **profile)
    )
    settings = EndpointSettings("claude", url, SecretStr(key), timeout_s=10, strict_validation=True)
    provider = build_provider("anthropic", settings)
    assert isinstance(provider, AnthropicProvider)

    async def go() -> Any:
        try:
            return await scenario(provider)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def lines(n: int, mode: str = "json_schema", prefix: str = "att") -> list[BatchLine]:
    request = summary_request("claude-test", mode)
    return [
        BatchLine(f"{prefix}{i}", replace(request, messages=[*request.messages[:1], _user(i)]))
        for i in range(n)
    ]


def _user(i: int) -> dict[str, str]:
    return {"role": "user", "content": f"Document {i}: the quarterly report says revenue grew."}


def metadata(n: int, at: float | None = None) -> dict[str, str]:
    submitted = time.time() if at is None else at
    return {
        "docroute_intent": "intent-1",
        "docroute_submitted_at": str(int(submitted)),
        "docroute_requests": str(n),
    }


def by_id(results: list[LineResult]) -> dict[str, LineResult]:
    return {r.custom_id: r for r in results}


@pytest.mark.parametrize("mode", ["json_schema", "tool"])
def test_submit_poll_results_round_trip_gives_replies_with_usage(sim, clock, mode):
    batch = lines(3, mode)

    async def scenario(p: AnthropicProvider) -> Any:
        job_id = await p.submit(batch, metadata=metadata(3))
        running = await p.poll(job_id)
        clock.now += T
        ended = await p.poll(job_id)
        alone = await p.complete(batch[0].request)
        return job_id, running, ended, await p.results(job_id), alone

    job_id, running, ended, results, alone = run(sim, scenario)
    assert (running.phase, running.status, running.total, running.done) == (
        "running",
        "in_progress",
        3,
        0,
    )
    assert (ended.phase, ended.status, ended.total, ended.done, ended.failed) == (
        "ended",
        "ended",
        3,
        3,
        0,
    )
    assert ended.ended and ended.job_id == job_id
    replies = by_id(results)
    assert sorted(replies) == ["att0", "att1", "att2"]
    records = [r for r in sim.requests("claude") if r.batch_id == job_id]
    assert len(records) == 3
    for record, line in zip(records, batch, strict=True):
        reply = replies[line.custom_id].reply
        assert reply is not None and replies[line.custom_id].error is None
        assert set(json.loads(reply.text or "")) >= {"summary"}  # the schema's answer, either mode
        assert reply.usage == Usage(
            input_tokens=record.prompt_tokens, output_tokens=record.completion_tokens
        )
        assert reply.request_id and reply.request_id.startswith("msg_")
        assert reply.model_reported == "claude-test"
    # the params are what complete() sends: the same request costs the same prompt tokens
    assert replies["att0"].reply is not None
    assert replies["att0"].reply.usage.input_tokens == alone.usage.input_tokens
    assert replies["att0"].reply.finish_reason == alone.finish_reason


def test_errored_lines_become_the_errors_a_call_would_raise(sim, clock):
    batch = lines(4)
    bad = BatchLine("att-bad", replace(batch[0].request, max_output_tokens=0))  # a 400

    async def scenario(p: AnthropicProvider) -> Any:
        job_id = await p.submit([*batch, bad], metadata=metadata(5))
        clock.now += T
        return await p.poll(job_id), by_id(await p.results(job_id))

    script = ["overloaded", "server_error", "rate_limited", "none"]
    state, results = run(sim, scenario, script=script)
    assert (state.total, state.done, state.failed) == (5, 5, 4)
    kinds = {k: type(r.error) for k, r in results.items() if r.error is not None}
    assert kinds == {
        "att0": errors.Overloaded,
        "att1": errors.ServerError,
        "att2": errors.RateLimited,
        "att-bad": errors.BadRequest,
    }
    assert results["att3"].reply is not None and not results["att3"].unfinished
    overloaded = results["att0"].error
    assert overloaded is not None
    assert (overloaded.provider, overloaded.http_status) == ("claude", 529)
    assert "max_tokens" in str(results["att-bad"].error)


def test_a_cancel_keeps_the_done_lines_and_leaves_the_rest_unfinished(sim, clock):
    async def scenario(p: AnthropicProvider) -> Any:
        job_id = await p.submit(lines(4), metadata=metadata(4))
        clock.now += 5
        canceling = await p.cancel(job_id)
        clock.now += 1
        ended = await p.poll(job_id)
        again = await p.cancel(job_id)  # refused by the API: it has ended; the state says so
        return canceling, ended, again, by_id(await p.results(job_id))

    canceling, ended, again, results = run(sim, scenario)
    assert (canceling.phase, canceling.status) == ("running", "canceling")
    assert (ended.phase, ended.done, ended.failed) == ("ended", 4, 2)
    assert again == ended
    assert [k for k, r in results.items() if r.reply is not None] == ["att0", "att1"]
    assert [k for k, r in results.items() if r.unfinished] == ["att2", "att3"]
    assert all(r.error is None for r in results.values())
    assert len(sim.requests("claude")) == 2


def test_an_expired_job_leaves_the_lines_not_run_unfinished(sim, clock):
    async def scenario(p: AnthropicProvider) -> Any:
        job_id = await p.submit(lines(4), metadata=metadata(4))
        clock.now += 6
        return await p.poll(job_id), by_id(await p.results(job_id))

    state, results = run(sim, scenario, batch_expire_after_s=5.0)
    assert state.ended and (state.done, state.failed) == (4, 2)
    assert [r.unfinished for r in results.values()] == [False, False, True, True]


def test_find_matches_submission_time_and_size(sim, clock):
    async def scenario(p: AnthropicProvider) -> Any:
        submitted = time.time()
        three = await p.submit(lines(3), metadata=metadata(3, submitted))
        two = await p.submit(lines(2, prefix="b"), metadata=metadata(2, submitted))
        return (
            three,
            two,
            await p.find(metadata(3, submitted)),
            await p.find(metadata(2, submitted)),
            await p.find(metadata(4, submitted)),  # no job of that size
            await p.find(metadata(3, submitted - 3600)),  # submitted long before both
            await p.find(metadata(3, submitted + 3600)),  # long after
        )

    three, two, found3, found2, *misses = run(sim, scenario)
    assert (found3, found2) == (three, two) and three != two
    assert misses == [None, None, None]


def test_find_needs_the_submission_time_and_size():
    provider = AnthropicProvider(EndpointSettings("claude", "http://127.0.0.1:9", None, 1))

    async def scenario() -> None:
        try:
            await provider.find({"docroute_intent": "intent-1"})
        finally:
            await provider.aclose()

    with pytest.raises(ValueError, match="docroute_submitted_at"):
        asyncio.run(scenario())


def test_job_call_failures_are_translated(sim, clock):
    async def unknown(p: AnthropicProvider) -> Any:
        return await _raised(p.poll("msgbatch_nope"))

    async def too_early(p: AnthropicProvider) -> Any:
        job_id = await p.submit(lines(1), metadata=metadata(1))
        return await _raised(p.results(job_id))

    async def locked(p: AnthropicProvider) -> Any:
        return await _raised(p.submit(lines(1), metadata=metadata(1)))

    missing = run(sim, unknown)
    assert isinstance(missing, errors.BadRequest) and missing.http_status == 404
    assert isinstance(run(sim, too_early), errors.BadRequest)  # no results before the end
    refused = run(sim, locked, key="sk-" + "ant-wrong-key-123", api_key="sk-" + "ant-right-key-456")
    assert isinstance(refused, errors.AuthError) and refused.http_status == 401


async def _raised(call: Awaitable[Any]) -> errors.ProviderError:
    try:
        await call
    except errors.ProviderError as exc:
        return exc
    raise AssertionError("the call did not fail")


def test_the_adapter_offers_batches_within_anthropics_limits():
    provider = AnthropicProvider(EndpointSettings("claude", "http://127.0.0.1:9", None, 1))
    assert supports_batch(provider)
    assert (provider.batch_limits.max_requests, provider.batch_limits.max_bytes) == (
        100_000,
        256 * 1024 * 1024,
    )
    plain, accented = lines(1)[0], lines(1)[0]
    text = accented.request.messages[-1]["content"]
    accented = replace(
        accented,
        request=replace(
            accented.request,
            messages=[*accented.request.messages[:-1], {"role": "user", "content": text + "é"}],
        ),
    )
    assert provider.line_bytes(accented) - provider.line_bytes(plain) == 2  # UTF-8 bytes
    asyncio.run(provider.aclose())
