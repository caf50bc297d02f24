"""The OpenAI adapter's batch methods (``OpenAIBatches``): the real ``openai`` SDK (strict)
against the simulator's Files + Batch API, on the simulator's clock; and ``split``."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import openai
import pytest
from pydantic import SecretStr

from pipeline import errors
from pipeline.models import Usage
from pipeline.providers import EndpointSettings, OpenAICompatibleProvider, OpenAIProvider
from pipeline.providers.batch import (
    BatchLimits,
    BatchLine,
    BatchProvider,
    LineResult,
    split,
    supports_batch,
)
from pipeline.simulator import EndpointProfile, SimulatorServer
from pipeline.validation import validate_reply
from schemas import get_schema
from tests.test_providers_common import sha, summary_request

MODEL = "gpt-4.1-mini"
T = 10.0  # a job's turnaround: 1 s validating, 8 s of lines (4 lines: +3, +5, +7, +9), 1 s more
KEY = "sk-" + "test"
SPEC = get_schema("chunk_summary")
R = TypeVar("R")


@pytest.fixture
def sim(clocked_simulator: SimulatorServer) -> SimulatorServer:
    return clocked_simulator


def settings(url: str | None, name: str = "oai", key: str = KEY) -> EndpointSettings:
    return EndpointSettings(
        name=name, base_url=url, api_key=SecretStr(key), timeout_s=10, strict_validation=True
    )


def endpoint(sim: SimulatorServer, name: str = "oai", **profile: Any) -> str:
    return sim.add_endpoint(name, EndpointProfile(batch_turnaround_s=T, **profile))


def run(url: str, act: Callable[[OpenAIProvider], Awaitable[R]], key: str = KEY) -> R:
    """``act(provider)`` through a fresh adapter of ``url``, closed afterwards."""
    provider = OpenAIProvider(settings(url, key=key))

    async def go() -> R:
        try:
            return await act(provider)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def lines(n: int, model: str = MODEL, prefix: str = "att") -> list[BatchLine]:
    base = summary_request(model)
    return [
        BatchLine(
            f"{prefix}{i}",
            replace(base, messages=[base.messages[0], {"role": "user", "content": f"Doc {i}."}]),
        )
        for i in range(n)
    ]


def submit(url: str, batch: list[BatchLine], intent: str = "intent-1") -> str:
    return run(url, lambda p: p.submit(batch, metadata={"docroute_intent": intent}))


def by_id(results: list[LineResult]) -> dict[str, LineResult]:
    return {r.custom_id: r for r in results}


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)


def test_submit_poll_results_round_trip(sim, clock):
    url = endpoint(sim)
    batch = lines(4)
    job_id = submit(url, batch)
    seen = []
    for step in (0.0, 1.0, 4.0, 4.0, 1.0):  # +0 validating, +1, +5 (2 done), +9, +10
        clock.now += step
        state = run(url, lambda p: p.poll(job_id))
        seen.append((state.phase, state.status, state.total, state.done))
    assert seen == [
        ("pending", "validating", 0, 0),
        ("running", "in_progress", 4, 0),
        ("running", "in_progress", 4, 2),
        ("running", "finalizing", 4, 4),
        ("ended", "completed", 4, 4),
    ]
    assert state.ended and state.job_id == job_id and state.failed == 0 and state.error is None

    results = by_id(run(url, lambda p: p.results(job_id)))
    assert sorted(results) == ["att0", "att1", "att2", "att3"]
    records = {r.prompt_sha256: r for r in sim.requests("oai")}
    assert len(records) == 4 and {r.batch_id for r in records.values()} == {job_id}
    for line in batch:
        result = results[line.custom_id]
        assert result.error is None and not result.unfinished and result.reply is not None
        reply = result.reply
        assert json.loads(validate_reply(reply, SPEC))["summary"]
        record = records[sha(line.request.messages[-1]["content"])]
        assert reply.usage == Usage(
            input_tokens=record.prompt_tokens, output_tokens=record.completion_tokens
        )
        assert (reply.finish_reason, reply.model_reported) == ("stop", MODEL)
        assert reply.request_id
    assert (
        sum(r.reply.usage.input_tokens for r in results.values() if r.reply)
        == (sim.tokens_served("oai")[0])
    )


@pytest.fixture
def capture() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback server that keeps each POSTed JSON body and answers 400 (what ``complete``
    puts on the wire, byte for byte, before any answer)."""
    bodies: list[dict[str, Any]] = []

    class Keep(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            said = json.dumps({"error": {"message": "kept", "type": "invalid_request_error"}})
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(said)))
            self.end_headers()
            self.wfile.write(said.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keep)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_the_uploaded_lines_carry_exactly_what_complete_sends(sim, clock, capture):
    url = endpoint(sim)
    batch = lines(2)
    batch[1] = replace(batch[1], request=replace(batch[1].request, temperature=None))
    job_id = submit(url, batch)
    c = sdk(url)
    job = c.batches.retrieve(job_id)
    assert (job.endpoint, job.completion_window, job.metadata) == (
        "/v1/chat/completions",
        "24h",
        {"docroute_intent": "intent-1"},
    )
    content = c.files.content(job.input_file_id).content
    assert c.files.retrieve(job.input_file_id).purpose == "batch"
    rows = [json.loads(line) for line in content.splitlines()]
    assert [(r["custom_id"], r["method"], r["url"]) for r in rows] == [
        ("att0", "POST", "/v1/chat/completions"),
        ("att1", "POST", "/v1/chat/completions"),
    ]
    sizes = run(url, lambda p: asyncio.sleep(0, [p.line_bytes(line) for line in batch]))
    assert sum(sizes) == len(content)

    capture_url, sent = capture
    for line in batch:
        with pytest.raises(errors.BadRequest):
            run(capture_url, lambda p, line=line: p.complete(line.request))
    assert [r["body"] for r in rows] == sent
    first = rows[0]["body"]
    assert (first["model"], first["max_completion_tokens"], first["temperature"]) == (
        MODEL,
        600,
        0.0,
    )
    assert first["messages"] == batch[0].request.messages
    assert first["response_format"]["json_schema"]["strict"] is True
    assert "temperature" not in rows[1]["body"]


def test_error_lines_become_the_errors_a_call_would_raise(sim, clock):
    script = ["server_error", "rate_limited", "overloaded", "auth", "timeout", "dropped", "none"]
    url = endpoint(sim, script=script)
    batch = lines(7)
    bad = BatchLine("att-bad", replace(batch[0].request, messages=[]))  # a 400 on the chat route
    job_id = submit(url, [*batch, bad])
    clock.now += T
    state = run(url, lambda p: p.poll(job_id))
    assert (state.phase, state.total, state.done, state.failed) == ("ended", 8, 8, 7)
    results = by_id(run(url, lambda p: p.results(job_id)))
    kinds = {k: (type(r.error), r.error.http_status) for k, r in results.items() if r.error}
    assert kinds == {
        "att0": (errors.ServerError, 500),
        "att1": (errors.RateLimited, 429),
        "att2": (errors.Overloaded, 503),
        "att3": (errors.AuthError, 401),
        "att4": (errors.ServerError, None),  # no answer in the vendor's own time
        "att5": (errors.ServerError, None),
        "att-bad": (errors.BadRequest, 400),
    }
    assert all(r.error.provider == "oai" for r in results.values() if r.error)
    assert "timed out" in str(results["att4"].error)
    assert "messages" in str(results["att-bad"].error)
    assert not any(r.unfinished for r in results.values())
    ok = results["att6"].reply
    assert ok is not None and results["att6"].error is None
    validate_reply(ok, SPEC)


@pytest.mark.parametrize(
    ("fault", "kind", "cls"),
    [
        ("invalid", "schema_invalid", errors.InvalidOutput),
        ("refusal", "refusal", errors.InvalidOutput),
        ("truncated", "truncated", errors.OutputTruncated),
    ],
)
def test_unusable_answers_are_replies_that_fail_validation(sim, clock, fault, kind, cls):
    url = endpoint(sim, script=[fault])
    job_id = submit(url, lines(1))
    clock.now += T
    (result,) = run(url, lambda p: p.results(job_id))
    assert result.error is None and result.reply is not None  # answered 200, and billed
    assert result.reply.usage.input_tokens > 0
    with pytest.raises(cls) as raised:
        validate_reply(result.reply, SPEC)
    assert raised.value.kind == kind


def test_a_cancel_keeps_the_done_lines_and_leaves_the_rest_unfinished(sim, clock):
    url = endpoint(sim)
    job_id = submit(url, lines(4))
    clock.now += 5  # 2 of 4 lines done
    cancelling = run(url, lambda p: p.cancel(job_id))
    assert (cancelling.phase, cancelling.status, cancelling.done) == ("running", "cancelling", 2)
    clock.now += 1
    ended = run(url, lambda p: p.poll(job_id))
    assert (ended.phase, ended.status, ended.total, ended.done) == ("ended", "cancelled", 4, 4)
    results = by_id(run(url, lambda p: p.results(job_id)))
    assert [k for k, r in results.items() if r.reply is not None] == ["att0", "att1"]
    assert sorted(k for k, r in results.items() if r.unfinished) == ["att2", "att3"]
    assert all(r.error is None for r in results.values())
    assert len(sim.requests("oai")) == 2  # only the done lines ran, and were billed


def test_cancelling_an_ended_job_gives_its_state(sim, clock):
    url = endpoint(sim)
    job_id = submit(url, lines(1))
    clock.now += T
    ended = run(url, lambda p: p.poll(job_id))
    assert run(url, lambda p: p.cancel(job_id)) == ended


def test_an_expired_job_leaves_the_lines_not_run_unfinished(sim, clock):
    url = endpoint(sim, batch_expire_after_s=6.0)  # lines done at +3, +5 before it
    job_id = submit(url, lines(4))
    clock.now += 5.9
    assert run(url, lambda p: p.poll(job_id)).phase == "running"
    clock.now += 0.2
    state = run(url, lambda p: p.poll(job_id))
    assert (state.phase, state.status, state.done, state.failed) == ("ended", "expired", 4, 2)
    results = by_id(run(url, lambda p: p.results(job_id)))
    assert {k: r.unfinished for k, r in results.items()} == {
        "att0": False,
        "att1": False,
        "att2": True,
        "att3": True,
    }
    assert results["att0"].reply is not None and results["att1"].reply is not None
    assert all(r.error is None for r in results.values())


def test_find_returns_the_job_of_an_intent(sim, clock):
    url = endpoint(sim)
    first = submit(url, lines(1), intent="intent-a")
    second = submit(url, lines(2), intent="intent-b")
    with sdk(url) as c:  # a job of someone else's, without metadata
        c.batches.create(
            input_file_id=c.batches.retrieve(first).input_file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )

    def find(intent: str) -> str | None:
        return run(url, lambda p: p.find({"docroute_intent": intent}))

    assert (find("intent-a"), find("intent-b")) == (first, second)
    assert find("intent-unknown") is None


def test_find_reads_past_the_first_page_of_the_listing(sim, clock):
    url = endpoint(sim)
    old = submit(url, lines(1), intent="intent-old")
    c = sdk(url)
    input_file = c.batches.retrieve(old).input_file_id
    for i in range(100):  # newer jobs push the old one onto the listing's second page
        c.batches.create(
            input_file_id=input_file,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"docroute_intent": f"other-{i}"},
        )
    assert old not in {b.id for b in c.batches.list(limit=100).data}
    assert run(url, lambda p: p.find({"docroute_intent": "intent-old"})) == old


def test_a_job_whose_input_fails_validation_says_why_and_has_no_results(sim, clock):
    url = endpoint(sim)
    mixed = [*lines(1), *lines(1, model="gpt-4.1-nano", prefix="other")]  # one model per job
    job_id = submit(url, mixed)
    clock.now += 1
    state = run(url, lambda p: p.poll(job_id))
    assert (state.phase, state.status, state.total, state.done) == ("ended", "failed", 0, 0)
    assert state.error is not None and "model" in state.error
    assert run(url, lambda p: p.results(job_id)) == []
    assert sim.requests("oai") == []


async def _raised(call: Awaitable[Any]) -> errors.ProviderError:
    try:
        await call
    except errors.ProviderError as exc:
        return exc
    raise AssertionError("the call did not fail")


def test_job_call_failures_are_translated(sim, clock):
    url = endpoint(sim)
    for act in (
        lambda p: _raised(p.poll("batch_nope")),
        lambda p: _raised(p.cancel("batch_nope")),
        lambda p: _raised(p.results("batch_nope")),
    ):
        missing = run(url, act)
        assert isinstance(missing, errors.BadRequest) and missing.http_status == 404
    locked = endpoint(sim, "locked", api_key="sk-right-key-456")
    for act in (
        lambda p: _raised(p.submit(lines(1), metadata={"docroute_intent": "i"})),
        lambda p: _raised(p.find({"docroute_intent": "i"})),
    ):
        refused = run(locked, act, key="sk-wrong-key-123")
        assert isinstance(refused, errors.AuthError) and refused.http_status == 401
    with pytest.raises(ValueError, match="at least one request"):
        run(url, lambda p: p.submit([], metadata={}))


def test_which_adapters_offer_batches():
    def built(preset: str | None) -> Any:
        if preset is None:
            return OpenAIProvider(settings("http://127.0.0.1:9/v1"))
        return OpenAICompatibleProvider(settings(None), preset=preset)

    providers = {p: built(p) for p in (None, "groq", "together")}
    plain = OpenAICompatibleProvider(settings("http://127.0.0.1:9/v1"))
    assert isinstance(providers[None], BatchProvider) and supports_batch(providers[None])
    assert (providers[None].batch_limits.max_requests, providers[None].batch_limits.max_bytes) == (
        50_000,
        200 * 1024 * 1024,
    )
    assert providers["groq"].batch_enabled is True and supports_batch(providers["groq"])
    assert providers["together"].batch_enabled is False
    assert not supports_batch(providers["together"]) and not supports_batch(plain)

    async def close() -> None:
        for p in [*providers.values(), plain]:
            await p.aclose()

    asyncio.run(close())


SIZES = {"a": 40, "b": 30, "c": 30, "d": 70, "e": 10}


def _named(names: str) -> list[BatchLine]:
    request = summary_request(MODEL)
    return [BatchLine(n, request) for n in names]


def _split(names: str, max_requests: int, max_bytes: int) -> list[str]:
    jobs = split(_named(names), BatchLimits(max_requests, max_bytes), lambda x: SIZES[x.custom_id])
    return ["".join(line.custom_id for line in job) for job in jobs]


def test_split_keeps_each_job_within_the_request_count():
    assert _split("abcde", 2, 1000) == ["ab", "cd", "e"]
    assert _split("abcde", 5, 1000) == ["abcde"]
    assert _split("", 2, 1000) == []


def test_split_keeps_each_job_within_the_bytes():
    assert _split("abcde", 100, 100) == ["abc", "de"]  # 40+30+30 fills one exactly
    assert _split("abcde", 100, 99) == ["ab", "c", "de"]
    assert _split("abcde", 2, 70) == ["ab", "c", "d", "e"]


def test_split_refuses_a_line_larger_than_a_whole_job():
    with pytest.raises(ValueError, match=r"request d takes 70 bytes.*\(69\)"):
        _split("abcde", 100, 69)


def test_split_with_the_adapters_line_sizes():
    provider = OpenAIProvider(settings("http://127.0.0.1:9/v1"))
    batch = lines(5)
    size = provider.line_bytes(batch[0])
    assert all(provider.line_bytes(line) == size for line in batch)  # "Doc i." alike
    jobs = split(batch, BatchLimits(100, 2 * size), provider.line_bytes)
    assert [len(job) for job in jobs] == [2, 2, 1]
    assert [line for job in jobs for line in job] == batch
    asyncio.run(provider.aclose())
