"""The simulator's Mistral batch jobs (and its files routes on mistral endpoints), through
the real ``mistralai`` SDK, which validates every answer against its models.

The server's clock is injected, so a job's turnaround passes when the test says so; one test
runs on the real clock with a short turnaround and a generous deadline.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral, errors, models

from pipeline.simulator import EndpointProfile, SimulatorServer

MODEL = "mistral-small-latest"
T = 10.0  # the turnaround of the clock-driven jobs: 1 s queued, 8 s of lines, 1 s more


@pytest.fixture
def sim(clocked_simulator: SimulatorServer) -> SimulatorServer:
    return clocked_simulator


def client(
    sim: SimulatorServer, name: str, profile: EndpointProfile | None = None, key: str = "k"
) -> Mistral:
    profile = (profile or EndpointProfile(batch_turnaround_s=T)).model_copy(
        update={"protocol": "mistral"}
    )
    return Mistral(api_key=key, server_url=sim.add_endpoint(name, profile))


def request(custom_id: str, text: str | None = None, **body: Any) -> dict[str, Any]:
    text = text or f"Chunk {custom_id}. It says something."
    return {
        "custom_id": custom_id,
        "body": {"messages": [{"role": "user", "content": text}]} | body,
    }


def jsonl(lines: list[Any]) -> bytes:
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()


def upload(c: Mistral, lines: list[Any]) -> models.CreateFileResponse:
    return c.files.upload(file={"file_name": "in.jsonl", "content": jsonl(lines)}, purpose="batch")


def submit(c: Mistral, lines: list[Any], **kw: Any) -> models.BatchJob:
    kw.setdefault("model", MODEL)
    file_id = upload(c, lines).id
    return c.batch.jobs.create(input_files=[file_id], endpoint="/v1/chat/completions", **kw)


def file_lines(c: Mistral, file_id: Any) -> list[dict[str, Any]]:
    assert isinstance(file_id, str)
    content = c.files.download(file_id=file_id).read()
    return [json.loads(line) for line in content.decode().splitlines()]


def status_of(call: Any) -> int:
    with pytest.raises(errors.SDKError) as info:
        call()
    return info.value.status_code


def test_a_job_runs_its_course_and_its_output_parses(sim, clock):
    c = client(sim, "eu")
    lines = [request(f"req-{i}") for i in range(4)]  # done at +3, +5, +7, +9
    sent = upload(c, lines)
    assert (sent.purpose, sent.sample_type, sent.source, sent.num_lines) == (
        "batch",
        "batch_request",
        "upload",
        4,
    )
    assert sent.size_bytes == len(jsonl(lines))
    assert c.files.retrieve(file_id=sent.id).deleted is False
    assert c.files.download(file_id=sent.id).read() == jsonl(lines)

    job = c.batch.jobs.create(
        input_files=[sent.id],
        endpoint="/v1/chat/completions",
        model=MODEL,
        metadata={"docroute_intent": "i1"},
    )
    assert (job.status, job.metadata, job.model, job.input_files) == (
        "QUEUED",
        {"docroute_intent": "i1"},
        MODEL,
        [sent.id],
    )
    seen = []
    for step in (1.0, 4.0, 4.0, 1.0):  # 1001: running; 1005: 2 done; 1009: 4 done; 1010
        clock.now += step
        j = c.batch.jobs.get(job_id=job.id)
        seen.append((j.status, j.completed_requests, j.total_requests))
    assert seen == [("RUNNING", 0, 4), ("RUNNING", 2, 4), ("RUNNING", 4, 4), ("SUCCESS", 4, 4)]
    assert j.started_at == j.created_at + 1 and j.completed_at == j.created_at + 10
    assert (j.succeeded_requests, j.failed_requests, j.error_file) == (4, 0, None)

    output = file_lines(c, j.output_file)
    assert [line["custom_id"] for line in output] == [r["custom_id"] for r in lines]
    replies = [
        models.ChatCompletionResponse.model_validate(ln["response"]["body"]) for ln in output
    ]
    assert {ln["response"]["status_code"] for ln in output} == {200}
    assert all(ln["error"] is None and ln["id"] for ln in output)
    assert {r.model for r in replies} == {MODEL}
    produced = c.files.retrieve(file_id=j.output_file)
    assert (produced.purpose, produced.sample_type, produced.source) == (
        "batch",
        "batch_result",
        "mistral",
    )

    records = sim.requests("eu")
    assert [r.status for r in records] == [200] * 4 and {r.batch_id for r in records} == {job.id}
    prompt, completion = sim.tokens_served("eu")
    assert prompt == sum(r.usage.prompt_tokens or 0 for r in replies)
    assert completion == sum(r.usage.completion_tokens or 0 for r in replies)

    # the same body sent alone to the chat route gets the same answer
    alone = c.chat.complete(model=MODEL, messages=lines[0]["body"]["messages"])
    assert alone.choices[0].message.content == replies[0].choices[0].message.content
    assert sim.requests("eu")[-1].batch_id is None

    for _ in range(2):  # reading again answers and logs nothing twice
        c.batch.jobs.get(job_id=job.id)
    assert len(sim.requests("eu")) == 5


def test_inline_requests_run_like_a_file(sim, clock):
    c = client(sim, "eu")
    job = c.batch.jobs.create(
        requests=[models.BatchRequest(custom_id="a", body=request("a")["body"])],
        endpoint="/v1/chat/completions",
        model=MODEL,
    )
    clock.now += T
    done = c.batch.jobs.get(job_id=job.id)
    assert (done.status, done.input_files) == ("SUCCESS", [])
    assert [ln["custom_id"] for ln in file_lines(c, done.output_file)] == ["a"]


def test_cancel_keeps_the_done_lines_and_writes_no_undone_ones(sim, clock):
    c = client(sim, "eu")
    job = submit(c, [request(f"c{i}") for i in range(4)])
    clock.now += 5
    cancelling = c.batch.jobs.cancel(job_id=job.id)
    assert (cancelling.status, cancelling.completed_requests) == ("CANCELLATION_REQUESTED", 2)
    clock.now += 0.5
    assert c.batch.jobs.get(job_id=job.id).status == "CANCELLATION_REQUESTED"
    clock.now += 0.5
    done = c.batch.jobs.get(job_id=job.id)
    assert (done.status, done.completed_at) == ("CANCELLED", done.created_at + 6)
    assert (done.total_requests, done.completed_requests, done.succeeded_requests) == (4, 2, 2)
    assert [line["custom_id"] for line in file_lines(c, done.output_file)] == ["c0", "c1"]
    assert done.error_file is None  # c2, c3 never ran: in neither file
    clock.now += 100
    assert c.batch.jobs.get(job_id=job.id).status == "CANCELLED"
    assert len(sim.requests("eu")) == 2
    assert status_of(lambda: c.batch.jobs.cancel(job_id=job.id)) == 400


def test_a_queued_job_cancelled_runs_nothing(sim, clock):
    c = client(sim, "eu")
    job = submit(c, [request("q")])
    c.batch.jobs.cancel(job_id=job.id)
    clock.now += T
    done = c.batch.jobs.get(job_id=job.id)
    assert (done.status, done.started_at, done.output_file, done.error_file) == (
        "CANCELLED",
        None,
        None,
        None,
    )
    assert sim.requests("eu") == []


def test_a_job_past_its_timeout_keeps_what_was_done(sim, clock):
    profile = EndpointProfile(batch_turnaround_s=T, batch_expire_after_s=5.0)
    c = client(sim, "slow", profile)
    job = submit(c, [request(f"e{i}") for i in range(4)])
    clock.now += 4.9
    assert c.batch.jobs.get(job_id=job.id).status == "RUNNING"
    clock.now += 0.2
    expired = c.batch.jobs.get(job_id=job.id)
    assert (expired.status, expired.completed_at) == ("TIMEOUT_EXCEEDED", expired.created_at + 5)
    assert (expired.completed_requests, expired.total_requests) == (2, 4)
    assert [line["custom_id"] for line in file_lines(c, expired.output_file)] == ["e0", "e1"]
    assert expired.error_file is None


def test_timeout_hours_bounds_a_job_too(sim, clock):
    c = client(sim, "long", EndpointProfile(batch_turnaround_s=4 * 3600.0))
    job = submit(c, [request("h0"), request("h1")], timeout_hours=1)
    clock.now += 3600
    assert c.batch.jobs.get(job_id=job.id).status == "TIMEOUT_EXCEEDED"


def test_line_faults_and_bad_bodies_go_to_the_error_file(sim, clock):
    script = ["server_error", "rate_limited", "overloaded", "timeout", "none"]
    c = client(sim, "flaky", EndpointProfile(batch_turnaround_s=T, script=script))
    lines = [request(f"f{i}") for i in range(5)] + [request("bad", messages=[])]
    job = submit(c, lines)
    clock.now += T
    done = c.batch.jobs.get(job_id=job.id)
    assert (done.status, done.succeeded_requests, done.failed_requests) == ("SUCCESS", 1, 5)
    assert [line["custom_id"] for line in file_lines(c, done.output_file)] == ["f4"]
    errors_ = {e["custom_id"]: e for e in file_lines(c, done.error_file)}
    statuses = {k: e["response"] and e["response"]["status_code"] for k, e in errors_.items()}
    assert statuses == {"f0": 500, "f1": 429, "f2": 503, "f3": None, "bad": 400}
    assert errors_["f1"]["response"]["body"]["type"] == "rate_limited"  # Mistral's error body
    assert errors_["f3"]["error"]["code"] == "request_timeout"
    assert [(r.status, r.fault) for r in sim.requests("flaky")] == [
        (500, "server_error"),
        (429, "rate_limited"),
        (503, "overloaded"),
        (0, "timeout"),
        (200, "none"),
        (400, "bad_request"),
    ]


def test_a_fault_rate_splits_a_job_and_invalid_answers_stay_200s(sim, clock):
    profile = EndpointProfile(batch_turnaround_s=T, rate_500=0.5, seed=3)
    c = client(sim, "shaky", profile)
    job = submit(c, [request(f"r{i}") for i in range(20)])
    clock.now += T
    done = c.batch.jobs.get(job_id=job.id)
    outputs, errors_ = file_lines(c, done.output_file), file_lines(c, done.error_file)
    assert 0 < len(errors_) < 20 and len(outputs) + len(errors_) == 20
    assert {e["response"]["status_code"] for e in errors_} == {500}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    c2 = client(sim, "broken", EndpointProfile(batch_turnaround_s=T, invalid_rate=1.0))
    job = submit(c2, [request("s", response_format=fmt)])
    clock.now += T
    (line,) = file_lines(c2, c2.batch.jobs.get(job_id=job.id).output_file)
    assert line["response"]["status_code"] == 200
    assert [r.fault for r in sim.requests("broken")] == ["invalid"]


def test_an_unreadable_input_fails_the_job_with_counted_errors(sim, clock):
    c = client(sim, "eu")
    job = submit(c, [request("a"), "{not json", {"custom_id": "b"}, request("a"), "[1]"])
    clock.now += 1
    failed = c.batch.jobs.get(job_id=job.id)
    assert failed.status == "FAILED" and failed.completed_at == failed.created_at + 1
    assert sorted((e.message, e.count) for e in failed.errors) == [
        ("A line is not a JSON object.", 2),
        ("Every request needs a JSON object 'body'.", 1),
        ("The 'custom_id' of every request must be unique.", 1),
    ]
    assert sim.requests("eu") == []


def test_list_filters_by_metadata_status_and_model_newest_first(sim, clock):
    c = client(sim, "eu")
    ids = []
    for i in range(3):
        ids.append(submit(c, [request(f"x{i}")], metadata={"docroute_intent": f"i{i}"}).id)
        clock.now += 1
    listed = c.batch.jobs.list()
    assert listed.total == 3 and [j.id for j in listed.data or []] == ids[::-1]
    only = c.batch.jobs.list(metadata={"docroute_intent": "i1"})
    assert only.total == 1 and [j.id for j in only.data or []] == [ids[1]]
    assert c.batch.jobs.list(metadata={"docroute_intent": "nope"}).total == 0
    page = c.batch.jobs.list(page=1, page_size=2, order_by="created")
    assert (page.total, [j.id for j in page.data or []]) == (3, [ids[2]])
    assert c.batch.jobs.list(status=["QUEUED", "RUNNING"]).total == 3
    assert c.batch.jobs.list(status=["SUCCESS"]).total == 0
    assert c.batch.jobs.list(model="other-model").total == 0
    clock.now += T
    assert c.batch.jobs.list(status=["SUCCESS"]).total == 3  # listing advances the jobs
    assert len(sim.requests("eu")) == 3


def test_a_wrong_key_is_refused_as_on_the_chat_route(sim):
    profile = EndpointProfile(batch_turnaround_s=T, api_key="sk-sim-secret-key")
    wrong = client(sim, "locked", profile, key="sk-wrong-key-1234")
    for call in (
        lambda: wrong.batch.jobs.list(),
        lambda: upload(wrong, [request("a")]),
        lambda: wrong.batch.jobs.get(job_id="any"),
    ):
        assert status_of(call) == 401
    right = client(sim, "locked", profile, key="sk-sim-secret-key")
    assert submit(right, [request("a")]).status == "QUEUED"


def test_unknown_ids_are_404s_in_mistral_shape(sim):
    c = client(sim, "eu")
    for call in (
        lambda: c.batch.jobs.get(job_id="nope"),
        lambda: c.batch.jobs.cancel(job_id="nope"),
        lambda: c.files.retrieve(file_id="nope"),
        lambda: c.files.download(file_id="nope"),
        lambda: c.batch.jobs.create(input_files=["nope"], endpoint="/v1/chat/completions"),
    ):
        assert status_of(call) == 404
    with pytest.raises(errors.SDKError) as info:
        c.batch.jobs.get(job_id="nope")
    assert json.loads(info.value.body)["object"] == "error"
    job = submit(c, [request("a")])
    other = client(sim, "us")  # an id is known only under its own endpoint
    assert status_of(lambda: other.batch.jobs.get(job_id=job.id)) == 404


def test_creates_are_checked(sim):
    c = client(sim, "eu")
    file_id = upload(c, [request("a")]).id
    create = c.batch.jobs.create
    for kw in (
        {"endpoint": "/v1/embeddings", "input_files": [file_id]},
        {"endpoint": "/v1/chat/completions"},  # neither files nor requests
        {"endpoint": "/v1/chat/completions", "input_files": [file_id], "timeout_hours": 0},
        {"endpoint": "/v1/chat/completions", "input_files": [file_id], "agent_id": "ag"},
    ):
        assert status_of(lambda kw=kw: create(model=MODEL, **kw)) == 400, kw
    tuning = c.files.upload(file={"file_name": "t.jsonl", "content": b"{}\n"}, purpose="fine-tune")
    assert (
        status_of(lambda: create(input_files=[tuning.id], endpoint="/v1/chat/completions")) == 404
    )
    assert c.files.upload(file={"file_name": "x.jsonl", "content": b"{}"}).purpose == "fine-tune"
    assert c.files.delete(file_id=file_id).deleted is True
    assert status_of(lambda: c.files.retrieve(file_id=file_id)) == 404


def test_other_protocols_have_no_mistral_job_routes(sim):
    sim.add_endpoint("gpt", EndpointProfile(protocol="openai"))
    sim.add_endpoint("claude", EndpointProfile(protocol="anthropic"))
    assert httpx.get(f"{sim.url}/gpt/v1/batch/jobs").status_code == 404
    assert httpx.get(f"{sim.url}/claude/v1/files/x").status_code == 404


def test_on_the_real_clock_a_job_succeeds_within_its_turnaround():
    with SimulatorServer() as server:
        c = client(server, "live", EndpointProfile(batch_turnaround_s=0.5))
        job = submit(c, [request(f"l{i}") for i in range(3)])
        deadline = time.monotonic() + 30
        while (job := c.batch.jobs.get(job_id=job.id)).status != "SUCCESS":
            assert job.status in ("QUEUED", "RUNNING")
            assert time.monotonic() < deadline, f"still {job.status} after 30 s"
            time.sleep(0.1)
        assert len(file_lines(c, job.output_file)) == 3
        assert len(server.requests("live")) == 3
