"""The simulator's OpenAI Files + Batch API, through the real SDK in strict mode.

The server's clock is injected, so a job's turnaround passes when the test says so; one test
runs on the real clock with a short turnaround and a generous deadline.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion

from pipeline.simulator import EndpointProfile, SimulatorServer

MODEL = "gpt-4o-mini"
T = 10.0  # the turnaround of the clock-driven jobs: 1 s validating, 8 s of lines, 1 s finalizing


@pytest.fixture
def sim(clocked_simulator: SimulatorServer) -> SimulatorServer:
    return clocked_simulator


def client(
    sim: SimulatorServer, name: str, profile: EndpointProfile | None = None, key: str = "sk-test"
) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sim.add_endpoint(name, profile or EndpointProfile(batch_turnaround_s=T)),
        api_key=key,
        max_retries=0,
        _strict_response_validation=True,
    )


def request(custom_id: str, text: str | None = None, **body: Any) -> dict[str, Any]:
    text = text or f"Chunk {custom_id}. It says something."
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()


def submit(c: openai.OpenAI, lines: list[Any], **kw: Any) -> Batch:
    upload = c.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    return c.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", **kw
    )


def file_lines(c: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in c.files.content(file_id).text.splitlines()]


def test_a_job_runs_its_course_and_its_output_parses_as_chat_completions(sim, clock):
    c = client(sim, "eu")
    lines = [request(f"req-{i}") for i in range(5)]
    upload = c.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert (upload.purpose, upload.filename, upload.bytes) == (
        "batch",
        "requests.jsonl",
        len(jsonl(lines)),
    )
    assert c.files.retrieve(upload.id) == upload
    assert c.files.content(upload.id).content == jsonl(lines)

    batch = c.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"docroute_run": "r1"},
    )
    assert (batch.status, batch.metadata, batch.model) == (
        "validating",
        {"docroute_run": "r1"},
        MODEL,
    )
    assert batch.expires_at == batch.created_at + 24 * 3600
    seen = []
    for step in (1.0, 4.0, 4.0, 1.0):  # 1001: in_progress; 1005: 2 lines done; 1009; 1010
        clock.now += step
        b = c.batches.retrieve(batch.id)
        assert b.request_counts is not None
        seen.append((b.status, b.request_counts.completed, b.request_counts.total))
    assert seen == [
        ("in_progress", 0, 5),
        ("in_progress", 2, 5),
        ("finalizing", 5, 5),
        ("completed", 5, 5),
    ]
    assert b.in_progress_at == b.created_at + 1 and b.completed_at == b.created_at + 10
    assert b.finalizing_at == b.created_at + 9 and b.error_file_id is None

    output = file_lines(c, b.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(r["custom_id"] for r in lines)
    replies = [ChatCompletion.model_validate(line["response"]["body"]) for line in output]
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)
    assert all(line["id"].startswith("batch_req_") for line in output)
    assert c.files.retrieve(b.output_file_id).purpose == "batch_output"

    records = sim.requests("eu")
    assert len(records) == 5 and {r.batch_id for r in records} == {batch.id}
    assert [r.status for r in records] == [200] * 5
    prompt, completion = sim.tokens_served("eu")
    assert prompt == sum(r.usage.prompt_tokens for r in replies if r.usage)
    assert completion == sum(r.usage.completion_tokens for r in replies if r.usage)
    assert b.usage is not None and (b.usage.input_tokens, b.usage.output_tokens) == (
        prompt,
        completion,
    )
    assert sim.stats()["eu"]["batch_requests"] == 5

    # the same body sent alone gets the same answer, logged without a batch id
    alone = c.chat.completions.create(**lines[0]["body"])
    by_id = {line["custom_id"]: line["response"]["body"] for line in output}
    assert alone.choices[0].message.content == by_id["req-0"]["choices"][0]["message"]["content"]
    assert sim.requests("eu")[-1].batch_id is None and sim.stats()["eu"]["batch_requests"] == 5


def test_polling_again_answers_and_logs_nothing_twice(sim, clock):
    c = client(sim, "eu")
    batch = submit(c, [request("a"), request("b")])
    clock.now += T
    for _ in range(3):
        assert c.batches.retrieve(batch.id).status == "completed"
        list(c.batches.list())
    assert len(sim.requests("eu")) == 2
    assert len(file_lines(c, c.batches.retrieve(batch.id).output_file_id)) == 2


def test_list_is_newest_first_in_cursor_pages(sim, clock):
    c = client(sim, "eu")
    ids = []
    for i in range(5):
        ids.append(submit(c, [request(f"x{i}")]).id)
        clock.now += 1
    page = c.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more is True
    raw = c.batches.with_raw_response.list(limit=2, after=ids[3]).http_response.json()
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[2], ids[1], True)
    assert [b.id for b in c.batches.list(limit=2)] == ids[::-1]  # the SDK follows the pages
    last = c.batches.list(limit=2, after=ids[1])
    assert [b.id for b in last.data] == [ids[0]] and last.has_more is False
    clock.now += T
    assert {b.status for b in c.batches.list(limit=10).data} == {"completed"}  # listing advances
    assert len(sim.requests("eu")) == 5
    with pytest.raises(openai.BadRequestError):
        c.batches.list(limit=0)


def test_cancel_mid_way_keeps_the_done_lines(sim, clock):
    c = client(sim, "eu")
    batch = submit(c, [request(f"c{i}") for i in range(4)])  # lines done at +3, +5, +7, +9
    clock.now += 5
    cancelling = c.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    clock.now += 0.5
    assert c.batches.retrieve(batch.id).status == "cancelling"
    clock.now += 0.5
    done = c.batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.cancelled_at == done.cancelling_at + 1
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    assert [line["custom_id"] for line in file_lines(c, done.output_file_id)] == ["c0", "c1"]
    errors = file_lines(c, done.error_file_id)
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [
        ("c2", None, "batch_cancelled"),
        ("c3", None, "batch_cancelled"),
    ]
    clock.now += 100
    assert c.batches.retrieve(batch.id).status == "cancelled"
    assert len(sim.requests("eu")) == 2  # only the done lines were answered, and billed
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(batch.id)


def test_a_job_past_its_expiry_expires_with_what_was_done(sim, clock):
    profile = EndpointProfile(batch_turnaround_s=T, batch_expire_after_s=5.0)
    c = client(sim, "slow", profile)
    batch = submit(c, [request(f"e{i}") for i in range(4)])
    assert batch.expires_at == batch.created_at + 5
    clock.now += 4.9
    assert c.batches.retrieve(batch.id).status == "in_progress"
    clock.now += 0.2
    expired = c.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at == expired.created_at + 5
    assert expired.completed_at is None and expired.finalizing_at is None
    assert len(file_lines(c, expired.output_file_id)) == 2
    errors = file_lines(c, expired.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("e2", "batch_expired"),
        ("e3", "batch_expired"),
    ]
    assert all(e["response"] is None for e in errors)


def test_an_invalid_input_file_fails_the_batch_with_errors(sim, clock):
    c = client(sim, "eu")
    bad_url = request("b") | {"url": "/v1/embeddings"}
    no_body = {k: v for k, v in request("c").items() if k != "body"}
    batch = submit(c, [request("a"), "{not json", bad_url, no_body, request("a")])
    assert batch.status == "validating"
    clock.now += 1
    failed = c.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.failed_at == failed.created_at + 1
    assert failed.errors is not None and failed.errors.data is not None
    assert [(e.code, e.line) for e in failed.errors.data] == [
        ("invalid_json_line", 2),
        ("invalid_url", 3),
        ("missing_required_parameter", 4),
        ("duplicate_custom_id", 5),
    ]
    assert failed.output_file_id is None and failed.error_file_id is None
    assert sim.requests("eu") == []
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(batch.id)


def test_line_faults_become_error_file_lines(sim, clock):
    script = ["server_error", "rate_limited", "overloaded", "timeout", "dropped", "none"]
    c = client(sim, "flaky", EndpointProfile(batch_turnaround_s=T, script=script))
    lines = [request(f"f{i}") for i in range(6)]
    lines.append(request("bad", messages=[]))  # a 400, as the chat route would answer it
    batch = submit(c, lines)
    clock.now += T
    done = c.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 6)
    assert [line["custom_id"] for line in file_lines(c, done.output_file_id)] == ["f5"]
    errors = {e["custom_id"]: e for e in file_lines(c, done.error_file_id)}
    statuses = {k: e["response"] and e["response"]["status_code"] for k, e in errors.items()}
    assert statuses == {"f0": 500, "f1": 429, "f2": 503, "f3": None, "f4": None, "bad": 400}
    assert errors["f1"]["response"]["body"]["error"]["code"] == "rate_limit_exceeded"
    assert errors["f0"]["error"] is None and errors["f3"]["error"]["code"] == "request_timeout"
    assert [(r.status, r.fault) for r in sim.requests("flaky")] == [
        (500, "server_error"),
        (429, "rate_limited"),
        (503, "overloaded"),
        (0, "timeout"),
        (0, "dropped"),
        (200, "none"),
        (400, "bad_request"),
    ]


def test_a_fault_rate_splits_a_job_between_output_and_error_files(sim, clock):
    c = client(sim, "shaky", EndpointProfile(batch_turnaround_s=T, rate_500=0.5, seed=3))
    batch = submit(c, [request(f"r{i}") for i in range(20)])
    clock.now += T
    done = c.batches.retrieve(batch.id)
    outputs, errors = file_lines(c, done.output_file_id), file_lines(c, done.error_file_id)
    assert 0 < len(errors) < 20 and len(outputs) + len(errors) == 20
    assert {e["response"]["status_code"] for e in errors} == {500}
    assert sorted(r.status for r in sim.requests("shaky")) == sorted(
        [200] * len(outputs) + [500] * len(errors)
    )


def test_unknown_ids_are_404s(sim):
    c = client(sim, "eu")
    for call in (
        lambda: c.batches.retrieve("batch_nope"),
        lambda: c.batches.cancel("batch_nope"),
        lambda: c.files.retrieve("file-nope"),
        lambda: c.files.content("file-nope"),
        lambda: c.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    other = client(sim, "us")  # an id is known only under its own endpoint
    batch = submit(c, [request("a")])
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)


def test_a_wrong_key_is_refused_as_on_the_chat_route(sim):
    profile = EndpointProfile(batch_turnaround_s=T, api_key="sk-sim-secret-key")
    wrong = client(sim, "locked", profile, key="sk-wrong-key-1234")
    for call in (lambda: wrong.batches.list(), lambda: submit(wrong, [request("a")])):
        with pytest.raises(openai.AuthenticationError):
            call()
    right = client(sim, "locked", profile, key="sk-sim-secret-key")
    assert submit(right, [request("a")]).status == "validating"


def test_uploads_and_creates_are_checked(sim):
    c = client(sim, "eu")
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("requests.txt", b"{}\n"), purpose="batch")
    upload = c.files.create(file=("notes.jsonl", jsonl([request("a")])), purpose="user_data")
    with pytest.raises(openai.BadRequestError):
        c.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert c.files.delete(upload.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(upload.id)


def test_other_protocols_have_no_batch_routes(sim):
    sim.add_endpoint("claude", EndpointProfile(protocol="anthropic"))
    assert httpx.get(f"{sim.url}/claude/v1/batches").status_code == 404


def test_on_the_real_clock_a_job_completes_within_its_turnaround():
    with SimulatorServer() as server:
        c = client(server, "live", EndpointProfile(batch_turnaround_s=0.5))
        batch = submit(c, [request(f"l{i}") for i in range(3)])
        deadline = time.monotonic() + 30
        while (batch := c.batches.retrieve(batch.id)).status != "completed":
            assert batch.status in ("validating", "in_progress", "finalizing")
            assert time.monotonic() < deadline, f"still {batch.status} after 30 s"
            time.sleep(0.1)
        assert len(file_lines(c, batch.output_file_id)) == 3
        assert len(server.requests("live")) == 3
