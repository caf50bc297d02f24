"""The Mistral adapter's batch jobs (``BatchProvider``): the real ``mistralai`` SDK against
the simulator's Mistral batch routes, on an injected clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from mistralai.client import Mistral
from pydantic import SecretStr

from pipeline import errors
from pipeline.providers import EndpointSettings, ProviderReply, build_provider
from pipeline.providers.batch import BatchLine, BatchProvider, LineResult, supports_batch
from pipeline.providers.mistral import MistralProvider
from pipeline.simulator import EndpointProfile, SimulatorServer
from tests.test_providers_common import summary_request

MODEL = "mistral-test"
T = 10.0  # a job's turnaround: 1 s queued, 8 s of lines, 1 s more
KEY = "sk-test-key-000"
R = TypeVar("R")


@pytest.fixture
def sim(clocked_simulator: SimulatorServer) -> SimulatorServer:
    return clocked_simulator


def endpoint(sim: SimulatorServer, name: str, **profile: Any) -> str:
    return sim.add_endpoint(
        name, EndpointProfile(protocol="mistral", batch_turnaround_s=T, **profile)
    )


def run(url: str, act: Callable[[MistralProvider], Awaitable[R]], key: str = KEY) -> R:
    """``act(provider)`` through a fresh adapter for ``url``."""
    settings = EndpointSettings(
        name="mistral", base_url=url, api_key=SecretStr(key), timeout_s=10, strict_validation=True
    )
    provider = build_provider("mistral", settings)
    assert isinstance(provider, MistralProvider)

    async def go() -> R:
        try:
            return await act(provider)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def lines(n: int, model: str = MODEL) -> list[BatchLine]:
    base = summary_request(model)
    return [
        BatchLine(
            f"attempt-{i}",
            replace(
                base, messages=[*base.messages[:-1], {"role": "user", "content": f"Text {i}."}]
            ),
        )
        for i in range(n)
    ]


def submit(url: str, batch: list[BatchLine], intent: str = "intent-1") -> str:
    return run(url, lambda p: p.submit(batch, metadata={"docroute_intent": intent}))


def by_id(results: list[LineResult]) -> dict[str, LineResult]:
    return {r.custom_id: r for r in results}


def test_the_adapter_is_a_batch_provider(sim):
    url = endpoint(sim, "m")
    provider = run(url, lambda p: asyncio.sleep(0, p))
    assert isinstance(provider, BatchProvider) and supports_batch(provider)
    assert provider.batch_limits.max_requests == 1_000_000


def test_submit_poll_results_round_trip(sim, clock):
    url = endpoint(sim, "m")
    batch = lines(3)
    job_id = submit(url, batch)
    state = run(url, lambda p: p.poll(job_id))
    assert (state.phase, state.status, state.total, state.done) == ("pending", "QUEUED", 3, 0)
    clock.now += 4  # line 0 done at +3.67
    state = run(url, lambda p: p.poll(job_id))
    assert (state.phase, state.status, state.done) == ("running", "RUNNING", 1)
    clock.now += T
    state = run(url, lambda p: p.poll(job_id))
    assert (state.ended, state.status, state.done, state.failed) == (True, "SUCCESS", 3, 0)

    results = by_id(run(url, lambda p: p.results(job_id)))
    assert set(results) == {line.custom_id for line in batch}
    replies = [r.reply for r in results.values()]
    assert all(isinstance(r, ProviderReply) and r.finish_reason == "stop" for r in replies)
    assert all(r and json.loads(r.text or "") and r.model_reported == MODEL for r in replies)
    prompt, completion = sim.tokens_served("m")
    assert sum(r.usage.input_tokens for r in replies if r) == prompt > 0
    assert sum(r.usage.output_tokens for r in replies if r) == completion > 0
    assert {r.batch_id for r in sim.requests("m")} == {job_id}


def test_the_uploaded_lines_carry_what_complete_sends_without_the_model(sim, clock):
    url = endpoint(sim, "m")
    batch = lines(2)
    job_id = submit(url, batch)
    c = Mistral(api_key=KEY, server_url=url)
    job = c.batch.jobs.get(job_id=job_id)
    assert (job.model, job.endpoint, job.metadata) == (
        MODEL,
        "/v1/chat/completions",
        {"docroute_intent": "intent-1"},
    )
    (file_id,) = job.input_files
    content = c.files.download(file_id=file_id).read()
    rows = [json.loads(line) for line in content.splitlines()]
    assert [row["custom_id"] for row in rows] == ["attempt-0", "attempt-1"]
    body = rows[0]["body"]
    assert "model" not in body and body["max_tokens"] == 600 and body["temperature"] == 0.0
    assert body["messages"] == batch[0].request.messages
    assert body["response_format"]["json_schema"]["strict"] is True
    sizes = run(url, lambda p: asyncio.sleep(0, [p.line_bytes(line) for line in batch]))
    assert sum(sizes) == len(content)

    clock.now += T  # and the simulator answered them as the chat route does
    served = run(url, lambda p: p.results(job_id))
    alone = run(url, lambda p: p.complete(batch[0].request))
    assert by_id(served)["attempt-0"].reply.text == alone.text  # type: ignore[union-attr]


def test_error_and_unfinished_lines(sim, clock):
    url = endpoint(sim, "m", script=["rate_limited", "none", "timeout"])
    batch = lines(4)
    job_id = submit(url, batch)
    clock.now += 7  # 3 of 4 lines done
    state = run(url, lambda p: p.cancel(job_id))
    assert (state.phase, state.status, state.done) == ("running", "CANCELLATION_REQUESTED", 3)
    clock.now += 1
    state = run(url, lambda p: p.poll(job_id))
    assert (state.ended, state.status, state.done, state.failed) == (True, "CANCELLED", 3, 2)
    results = by_id(run(url, lambda p: p.results(job_id)))
    assert len(results) == 4
    limited = results["attempt-0"].error
    assert isinstance(limited, errors.RateLimited) and limited.http_status == 429
    assert isinstance(results["attempt-1"].reply, ProviderReply)
    assert isinstance(results["attempt-2"].error, errors.Timeout)
    assert results["attempt-3"].unfinished and results["attempt-3"].error is None
    again = run(url, lambda p: p.cancel(job_id))  # ended: cancel says so, raises nothing
    assert again.status == "CANCELLED"


def test_a_timed_out_job_leaves_the_rest_unfinished(sim, clock):
    url = endpoint(sim, "slow", batch_expire_after_s=4.0)
    job_id = submit(url, lines(4))
    clock.now += 5
    state = run(url, lambda p: p.poll(job_id))
    assert (state.ended, state.status, state.done) == (True, "TIMEOUT_EXCEEDED", 1)
    results = run(url, lambda p: p.results(job_id))
    assert [(r.custom_id, r.reply is not None, r.unfinished) for r in results] == [
        ("attempt-0", True, False),
        ("attempt-1", False, True),
        ("attempt-2", False, True),
        ("attempt-3", False, True),
    ]


def test_a_refused_line_is_a_bad_request_and_a_server_error_is_transient(sim, clock):
    url = endpoint(sim, "m", script=["server_error", "overloaded"])
    batch = lines(3)
    bad = replace(batch[2].request, messages=[])  # the chat route answers this with a 400
    job_id = submit(url, [*batch[:2], BatchLine("attempt-2", bad)])
    clock.now += T
    results = by_id(run(url, lambda p: p.results(job_id)))
    assert isinstance(results["attempt-0"].error, errors.ServerError)
    assert isinstance(results["attempt-1"].error, errors.Overloaded)
    refused = results["attempt-2"].error
    assert isinstance(refused, errors.BadRequest) and refused.http_status == 400
    assert refused.provider == "mistral"


def test_find_returns_the_job_of_an_intent_and_no_other(sim):
    url = endpoint(sim, "m")
    first = submit(url, lines(1), intent="intent-a")
    second = submit(url, lines(1), intent="intent-b")
    assert run(url, lambda p: p.find({"docroute_intent": "intent-a"})) == first
    assert run(url, lambda p: p.find({"docroute_intent": "intent-b"})) == second
    assert run(url, lambda p: p.find({"docroute_intent": "intent-c"})) is None


def test_a_job_whose_input_failed_says_why(sim, clock):
    url = endpoint(sim, "m")
    c = Mistral(api_key=KEY, server_url=url)
    file = c.files.upload(file={"file_name": "x.jsonl", "content": b"[1]\n"}, purpose="batch")
    job = c.batch.jobs.create(input_files=[file.id], endpoint="/v1/chat/completions", model=MODEL)
    clock.now += 1
    state = run(url, lambda p: p.poll(job.id))
    assert (state.ended, state.status) == (True, "FAILED")
    assert state.error == "A line is not a JSON object."
    assert run(url, lambda p: p.results(job.id)) == []


def test_sdk_errors_are_translated(sim):
    url = endpoint(sim, "m", api_key=KEY)
    with pytest.raises(errors.AuthError) as auth:
        run(url, lambda p: p.submit(lines(1), metadata={}), key="sk-wrong-key-999")
    assert auth.value.http_status == 401
    for act in (lambda p: p.poll("nope"), lambda p: p.cancel("nope"), lambda p: p.results("x")):
        with pytest.raises(errors.BadRequest) as missing:
            run(url, act)
        assert missing.value.http_status == 404
    with pytest.raises(errors.ConnectionDropped):
        run("http://127.0.0.1:9", lambda p: p.poll("any"))
    with pytest.raises(ValueError, match="one model"):
        run(url, lambda p: p.submit([*lines(1), *lines(1, "other")], metadata={}))
