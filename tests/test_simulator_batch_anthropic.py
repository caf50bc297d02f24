"""The simulator's Anthropic Message Batches API, through the real SDK in strict mode.

The server's clock is injected, so a batch's turnaround passes when the test says so; one
test runs on the real clock with a short turnaround and a generous deadline.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

from pipeline.simulator import EndpointProfile, SimulatorServer

MODEL = "claude-sonnet-4-5"
T = 10.0  # the turnaround of the clock-driven batches: lines done at +1.8, +3.4, … of 5


@pytest.fixture
def sim(clocked_simulator: SimulatorServer) -> SimulatorServer:
    return clocked_simulator


def profile(**fields: Any) -> EndpointProfile:
    return EndpointProfile(**{"protocol": "anthropic", "batch_turnaround_s": T, **fields})


def client(
    sim: SimulatorServer, name: str, prof: EndpointProfile | None = None, key: str = "sk-ant-x"
) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=sim.add_endpoint(name, prof or profile()),
        api_key=key,
        max_retries=0,
        _strict_response_validation=True,
    )


def params(text: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {"model": MODEL, "max_tokens": 256, "messages": messages, **extra}


def request(custom_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": params(f"Chunk {custom_id}. It says something.", **extra),
    }


def submit(c: anthropic.Anthropic, n: int, prefix: str = "req") -> MessageBatch:
    return c.messages.batches.create(requests=[request(f"{prefix}-{i}") for i in range(n)])  # type: ignore[misc]


def results(c: anthropic.Anthropic, batch: MessageBatch) -> dict[str, Any]:
    """The batch's results file, each line checked against the SDK's type."""
    done = c.messages.batches.retrieve(batch.id)
    assert done.results_url is not None
    raw = httpx.get(done.results_url, headers={"x-api-key": c.api_key or ""})
    assert raw.status_code == 200
    lines = [
        MessageBatchIndividualResponse.model_validate(json.loads(x)) for x in raw.text.splitlines()
    ]
    assert [r.custom_id for r in c.messages.batches.results(batch.id)] == [
        r.custom_id for r in lines
    ]
    return {line.custom_id: line.result for line in lines}


def counts(batch: MessageBatch) -> tuple[int, int, int, int, int]:
    c = batch.request_counts
    return (c.processing, c.succeeded, c.errored, c.canceled, c.expired)


def test_a_batch_runs_its_course_and_its_results_parse_as_messages(sim, clock):
    c = client(sim, "claude")
    batch = submit(c, 5)
    assert (batch.processing_status, counts(batch), batch.results_url) == (
        "in_progress",
        (5, 0, 0, 0, 0),
        None,
    )
    assert batch.id.startswith("msgbatch_") and batch.ended_at is None
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600
    seen = []
    for step in (1.0, 4.0, 4.0, 1.0):  # 1001; 1005: 2 lines answered; 1009: all 5; 1010: ended
        clock.now += step
        b = c.messages.batches.retrieve(batch.id)
        seen.append((b.processing_status, counts(b), len(sim.requests("claude"))))
    assert seen == [
        ("in_progress", (5, 0, 0, 0, 0), 0),
        ("in_progress", (5, 0, 0, 0, 0), 2),  # the API counts nothing until the batch ends
        ("in_progress", (5, 0, 0, 0, 0), 5),
        ("ended", (0, 5, 0, 0, 0), 5),
    ]
    assert b.ended_at is not None and (b.ended_at - b.created_at).total_seconds() == T
    assert b.results_url == f"{sim.url}/claude/v1/messages/batches/{batch.id}/results"
    assert b.cancel_initiated_at is None and b.archived_at is None

    answers = results(c, batch)
    assert sorted(answers) == [f"req-{i}" for i in range(5)]
    assert {r.type for r in answers.values()} == {"succeeded"}
    assert {r.message.usage.service_tier for r in answers.values()} == {"batch"}
    records = sim.requests("claude")
    assert {r.batch_id for r in records} == {batch.id} and [r.status for r in records] == [200] * 5
    prompt, completion = sim.tokens_served("claude")
    assert prompt == sum(r.message.usage.input_tokens for r in answers.values())
    assert completion == sum(r.message.usage.output_tokens for r in answers.values())
    assert sim.stats()["claude"]["batch_requests"] == 5

    # the same params sent alone get the same answer, logged without a batch id
    alone = c.messages.create(**params("Chunk req-0. It says something."))
    assert alone.content == answers["req-0"].message.content
    assert sim.requests("claude")[-1].batch_id is None


def test_reading_again_answers_and_logs_nothing_twice(sim, clock):
    c = client(sim, "claude")
    batch = submit(c, 2)
    clock.now += T
    for _ in range(3):
        assert c.messages.batches.retrieve(batch.id).processing_status == "ended"
        list(c.messages.batches.list())
        results(c, batch)
    assert len(sim.requests("claude")) == 2


def test_list_is_newest_first_in_cursor_pages(sim, clock):
    c = client(sim, "claude")
    ids = []
    for i in range(5):
        ids.append(submit(c, 1, f"x{i}").id)
        clock.now += 1
    newest = ids[::-1]
    page = c.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest[:2] and page.has_more is True
    assert (page.first_id, page.last_id) == (newest[0], newest[1])
    after = c.messages.batches.list(limit=2, after_id=newest[1])
    assert [b.id for b in after.data] == newest[2:4] and after.has_more is True
    last = c.messages.batches.list(limit=2, after_id=newest[3])
    assert [b.id for b in last.data] == [newest[4]] and last.has_more is False
    before = c.messages.batches.list(limit=2, before_id=newest[4])
    assert [b.id for b in before.data] == newest[2:4] and before.has_more is True
    assert [b.id for b in c.messages.batches.list(limit=2)] == newest  # the SDK follows pages
    backwards = c.messages.batches.list(limit=2, before_id=newest[4])  # pages walk newer
    assert [b.id for b in backwards] == newest[2:4] + newest[:2]
    clock.now += T
    assert {b.processing_status for b in c.messages.batches.list()} == {"ended"}  # listing advances
    assert len(sim.requests("claude")) == 5
    for bad in (0, 1001):
        with pytest.raises(anthropic.BadRequestError):
            c.messages.batches.list(limit=bad)


def test_cancel_mid_way_keeps_the_done_lines(sim, clock):
    c = client(sim, "claude")
    batch = submit(c, 4)  # lines done at +3, +5, +7, +9
    clock.now += 5
    canceling = c.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    assert (canceling.cancel_initiated_at - canceling.created_at).total_seconds() == 5
    with pytest.raises(anthropic.BadRequestError):  # not deletable while processing
        c.messages.batches.delete(batch.id)
    clock.now += 0.5
    assert c.messages.batches.retrieve(batch.id).processing_status == "canceling"
    clock.now += 0.5
    done = c.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended" and counts(done) == (0, 2, 0, 2, 0)
    assert done.ended_at is not None and (done.ended_at - done.created_at).total_seconds() == 6
    answers = results(c, batch)
    assert {k: r.type for k, r in answers.items()} == {
        "req-0": "succeeded",
        "req-1": "succeeded",
        "req-2": "canceled",
        "req-3": "canceled",
    }
    clock.now += 100
    assert c.messages.batches.retrieve(batch.id).processing_status == "ended"
    assert len(sim.requests("claude")) == 2  # only the done lines were answered, and billed
    with pytest.raises(anthropic.BadRequestError):
        c.messages.batches.cancel(batch.id)
    assert c.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve(batch.id)


def test_a_batch_past_its_expiry_ends_with_what_was_done(sim, clock):
    c = client(sim, "slow", profile(batch_expire_after_s=5.0))
    batch = submit(c, 4)
    assert (batch.expires_at - batch.created_at).total_seconds() == 5
    clock.now += 4.9
    assert c.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    clock.now += 0.2
    expired = c.messages.batches.retrieve(batch.id)
    assert expired.processing_status == "ended" and counts(expired) == (0, 2, 0, 0, 2)
    assert expired.ended_at == expired.expires_at
    assert [r.type for r in results(c, batch).values()] == [
        "succeeded",
        "succeeded",
        "expired",
        "expired",
    ]


def test_line_faults_and_bad_params_become_errored_results(sim, clock):
    script = ["server_error", "rate_limited", "overloaded", "timeout", "dropped", "none"]
    c = client(sim, "flaky", profile(script=script))
    requests = [request(f"f{i}") for i in range(6)]
    requests.append({"custom_id": "bad", "params": params("x") | {"messages": []}})  # a 400
    batch = c.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    clock.now += T
    done = c.messages.batches.retrieve(batch.id)
    assert counts(done) == (0, 1, 6, 0, 0)
    answers = results(c, batch)
    assert answers["f5"].type == "succeeded"
    kinds = {k: r.error.error.type for k, r in answers.items() if r.type == "errored"}
    assert kinds == {
        "f0": "api_error",
        "f1": "rate_limit_error",
        "f2": "overloaded_error",
        "f3": "timeout_error",
        "f4": "api_error",
        "bad": "invalid_request_error",
    }
    assert "messages" in answers["bad"].error.error.message
    assert [(r.status, r.fault) for r in sim.requests("flaky")] == [
        (500, "server_error"),
        (429, "rate_limited"),
        (529, "overloaded"),
        (0, "timeout"),
        (0, "dropped"),
        (200, "none"),
        (400, "bad_request"),
    ]


def test_a_fault_rate_splits_a_batch_between_succeeded_and_errored(sim, clock):
    c = client(sim, "shaky", profile(rate_500=0.5, seed=3))
    batch = submit(c, 20)
    clock.now += T
    answers = results(c, batch)
    errored = [r for r in answers.values() if r.type == "errored"]
    assert 0 < len(errored) < 20
    assert {r.error.error.type for r in errored} == {"api_error"}
    assert sorted(r.status for r in sim.requests("shaky")) == sorted(
        [200] * (20 - len(errored)) + [500] * len(errored)
    )


def test_unknown_ids_are_404s(sim, clock):
    c = client(sim, "claude")
    for call in (
        lambda: c.messages.batches.retrieve("msgbatch_nope"),
        lambda: c.messages.batches.cancel("msgbatch_nope"),
        lambda: c.messages.batches.delete("msgbatch_nope"),
    ):
        with pytest.raises(anthropic.NotFoundError):
            call()
    batch = submit(c, 1)
    with pytest.raises(anthropic.NotFoundError):  # an id is known only under its endpoint
        client(sim, "claude-us").messages.batches.retrieve(batch.id)
    raw = httpx.get(f"{sim.url}/claude/v1/messages/batches/msgbatch_nope/results")
    assert raw.status_code == 404 and raw.json()["error"]["type"] == "not_found_error"


def test_results_are_refused_until_the_batch_ends(sim, clock):
    c = client(sim, "claude")
    batch = submit(c, 1)
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        c.messages.batches.results(batch.id)
    raw = httpx.get(f"{sim.url}/claude/v1/messages/batches/{batch.id}/results")
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_a_wrong_key_is_refused_as_on_the_messages_route(sim):
    locked = profile(api_key="sk-" + "ant-sim-secret-key")
    wrong = client(sim, "locked", locked, key="sk-" + "ant-wrong-key-1234")
    for call in (lambda: wrong.messages.batches.list(), lambda: submit(wrong, 1)):
        with pytest.raises(anthropic.AuthenticationError):
            call()
    right = client(sim, "locked", locked, key="sk-" + "ant-sim-secret-key")
    assert submit(right, 1).processing_status == "in_progress"


@pytest.mark.parametrize(
    "requests",
    [
        [request("has space")],
        [request("x" * 65)],
        [request("")],
        [request("a"), request("a")],
        [],
        [request("a") | {"metadata": {"k": "v"}}],
        [{"custom_id": "a"}],
    ],
    ids=["space", "too-long", "empty-id", "duplicate", "no-requests", "extra-field", "no-params"],
)
def test_a_bad_batch_is_refused_whole(sim, requests):
    c = client(sim, "claude")
    with pytest.raises(anthropic.BadRequestError) as refused:
        c.messages.batches.create(requests=requests)
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert list(c.messages.batches.list()) == [] and sim.requests("claude") == []


def test_more_than_100_000_requests_are_refused(sim):
    c = client(sim, "claude")
    tiny = {"model": MODEL, "max_tokens": 1, "messages": []}
    body = {"requests": [{"custom_id": f"r{i}", "params": tiny} for i in range(100_001)]}
    url = f"{sim.url}/claude/v1/messages/batches"
    raw = httpx.post(url, content=json.dumps(body), timeout=60)
    assert raw.status_code == 400 and "100,000" in raw.json()["error"]["message"]
    body["requests"].pop()
    assert httpx.post(url, content=json.dumps(body), timeout=60).status_code == 200
    assert [counts(b) for b in c.messages.batches.list()] == [(100_000, 0, 0, 0, 0)]


def test_other_protocols_have_no_message_batch_routes(sim):
    sim.add_endpoint("gpt", EndpointProfile(protocol="openai"))
    raw = httpx.get(f"{sim.url}/gpt/v1/messages/batches")
    assert raw.status_code == 404 and raw.json()["error"]["type"] == "not_found_error"


def test_on_the_real_clock_a_batch_ends_within_its_turnaround():
    with SimulatorServer() as server:
        c = client(server, "live", profile(batch_turnaround_s=0.5))
        batch = submit(c, 3)
        deadline = time.monotonic() + 30
        while (batch := c.messages.batches.retrieve(batch.id)).processing_status != "ended":
            assert batch.processing_status == "in_progress"
            assert time.monotonic() < deadline, f"still {batch.processing_status} after 30 s"
            time.sleep(0.1)
        assert counts(batch) == (0, 3, 0, 0, 0)
        assert len(server.requests("live")) == 3
