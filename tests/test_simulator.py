"""The OpenAI simulator, exercised with the real ``openai`` SDK over loopback (no mocks).

Every client runs with ``_strict_response_validation=True``, so a response that strays
from the SDK's own types fails the test that received it.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import hashlib
import importlib
import json
import math
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, ValidationError

from pipeline.simulator import EndpointProfile, SimulatorServer, serve_forever

MODEL = "gpt-4o-mini"
TEXT = (
    "This services contract between Globex GmbH and Initech Ltd takes effect on 15 March 2024. "
    "Globex GmbH pays EUR 12,500.50 per quarter for maintenance. "
    "Either party may terminate with 90 days notice. "
    "The agreement is governed by German law."
)


class Party(BaseModel):
    name: str
    role: Literal["buyer", "seller", "guarantor"]


class Payment(BaseModel):
    amount: float
    currency: str
    due_date: date | None


class Extraction(BaseModel):
    summary: str
    document_type: Literal["contract", "invoice", "letter"]
    parties: list[Party]
    key_points: list[str]
    effective_date: date
    payment: Payment
    page_count: int
    confidence: float
    notes: str | None


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema as OpenAI strict mode wants it: closed objects, all required."""
    schema = model.model_json_schema()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                node["additionalProperties"] = False
                node["required"] = list(node["properties"])
            for child in node.values():
                visit(child)
        elif isinstance(node, list):
            for child in node:
                visit(child)

    visit(schema)
    return schema


def schema_format(model: type[BaseModel] = Extraction) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": strict_schema(model), "strict": True},
    }


def user(text: str = TEXT) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


def client(sim: SimulatorServer, name: str, profile: EndpointProfile | None = None, **kw: Any):
    """A strict sync client for a fresh endpoint ``name``."""
    base_url = sim.add_endpoint(name, profile)
    options: dict[str, Any] = {"api_key": "sk-test", "max_retries": 0, **kw}
    return openai.OpenAI(base_url=base_url, _strict_response_validation=True, **options)


def extract(c: openai.OpenAI, text: str = TEXT, **kw: Any):
    return c.chat.completions.create(
        model=MODEL, messages=user(text), response_format=schema_format(), **kw
    )


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- answers -------------------------------------------------------------------------------


def test_structured_answer_validates_against_nested_model(sim):
    reply = extract(client(sim, "structured"))

    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert reply.model == MODEL and reply.id.startswith("chatcmpl-")
    result = Extraction.model_validate_json(choice.message.content)
    assert result.summary.startswith("This services contract between Globex GmbH")
    assert result.document_type == "contract"  # the enum value the text mentions
    assert result.parties and all(p.name in TEXT for p in result.parties)
    assert "Globex GmbH" in [p.name for p in result.parties]
    assert result.effective_date == date(2024, 3, 15)
    assert (result.payment.amount, result.payment.currency) == (12500.5, "EUR")
    assert all(point in TEXT for point in result.key_points)


def test_sdk_parse_helper_accepts_answers(sim):
    c = client(sim, "parse-helper")
    reply = c.chat.completions.parse(model=MODEL, messages=user(), response_format=Extraction)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Extraction) and parsed.effective_date == date(2024, 3, 15)


def test_answers_are_deterministic_and_follow_the_text(sim):
    c = client(sim, "determinism")
    first, again = extract(c), extract(c)
    other = extract(c, text="Initech Ltd invoices Umbrella Corp on 2023-07-01. Pay soon.")

    assert first.choices[0].message.content == again.choices[0].message.content
    assert other.choices[0].message.content != first.choices[0].message.content
    assert Extraction.model_validate_json(other.choices[0].message.content).effective_date == (
        date(2023, 7, 1)
    )


def test_fault_sequence_is_reproducible_per_seed(sim):
    def statuses(seed: int) -> list[int]:
        c = client(sim, f"seeded-{seed}", EndpointProfile(rate_429=0.3, rate_500=0.3, seed=seed))
        out = []
        for i in range(20):
            try:
                c.chat.completions.create(model=MODEL, messages=user(f"Chunk {i}."))
                out.append(200)
            except openai.APIStatusError as exc:
                out.append(exc.status_code)
        return out

    first = statuses(1)
    assert first == statuses(1)  # re-adding the endpoint restarts its counters
    assert first != statuses(2)
    assert {200, 429, 500} <= set(first)


def test_plain_text_without_response_format(sim):
    reply = client(sim, "plain").chat.completions.create(model=MODEL, messages=user())
    first_three = TEXT[: TEXT.index(" The agreement is governed")]
    assert reply.choices[0].message.content == first_three


def test_repair_request_answers_from_the_first_user_message(sim):
    c = client(sim, "repair")
    original = extract(c).choices[0].message.content
    messages = [
        {"role": "system", "content": "Extract the fields."},
        *user(),
        {"role": "assistant", "content": '{"summary": 1}'},
        {"role": "user", "content": "Your answer failed validation: summary must be a string."},
    ]
    repaired = c.chat.completions.create(
        model=MODEL, messages=messages, response_format=schema_format()
    )

    assert repaired.choices[0].message.content == original
    assert [r.is_repair for r in sim.requests("repair")] == [False, True]


# -- faults --------------------------------------------------------------------------------


def test_rate_limit_raises_with_retry_after(sim):
    c = client(sim, "limited", EndpointProfile(rate_429=1.0, retry_after_s=2))
    with pytest.raises(openai.RateLimitError) as info:
        extract(c)

    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.response.headers["retry-after-ms"] == "2000"
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.type == "requests"
    assert MODEL in info.value.message
    assert info.value.request_id.startswith("req_")
    assert sim.requests("limited")[0].fault == "rate_limited"


def test_server_error_raises_internal_server_error(sim):
    c = client(sim, "broken", EndpointProfile(rate_500=1.0))
    with pytest.raises(openai.InternalServerError) as info:
        extract(c)

    assert info.value.status_code == 500
    assert info.value.type == "server_error"
    assert "had an error while processing your request" in info.value.message


def test_fail_first_then_recover(sim):
    c = client(sim, "flaky", EndpointProfile(fail_first=2))
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            extract(c)
    Extraction.model_validate_json(extract(c).choices[0].message.content)

    assert [r.fault for r in sim.requests("flaky")] == ["server_error", "server_error", "none"]
    assert [r.status for r in sim.requests("flaky")] == [500, 500, 200]


def test_invalid_rate_gives_json_that_breaks_the_schema(sim):
    c = client(sim, "liar", EndpointProfile(invalid_rate=1.0))
    for i in range(8):
        content = extract(c, text=f"{TEXT} Variant {i}.").choices[0].message.content
        json.loads(content)  # it parses …
        with pytest.raises(ValidationError):  # … but does not fit
            Extraction.model_validate_json(content)
    assert {r.fault for r in sim.requests("liar")} == {"invalid"}


def test_invalid_first_then_valid(sim):
    c = client(sim, "shaky", EndpointProfile(invalid_first=1))
    with pytest.raises(ValidationError):
        Extraction.model_validate_json(extract(c).choices[0].message.content)
    Extraction.model_validate_json(extract(c).choices[0].message.content)

    assert [r.fault for r in sim.requests("shaky")] == ["invalid", "none"]


def test_overloaded_is_503_internal_server_error(sim):
    with pytest.raises(openai.InternalServerError) as info:
        extract(client(sim, "busy", EndpointProfile(rate_503=1.0)))
    assert info.value.status_code == 503
    assert sim.requests("busy")[0].fault == "overloaded"


def test_timeout_surfaces_as_api_timeout_error(sim):
    c = client(sim, "hang", EndpointProfile(rate_timeout=1.0, hang_s=5), timeout=0.5)
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        extract(c)

    assert time.perf_counter() - started < 2
    assert [(r.status, r.fault) for r in sim.requests("hang")] == [(0, "timeout")]


def test_a_client_that_outlasts_the_hang_gets_the_answer(sim):
    c = client(sim, "slow", EndpointProfile(script=["timeout"], hang_s=0.2), timeout=5)
    started = time.perf_counter()
    reply = extract(c)

    assert time.perf_counter() - started >= 0.2
    Extraction.model_validate_json(reply.choices[0].message.content)
    (record,) = sim.requests("slow")
    assert (record.status, record.fault) == (200, "timeout") and record.completion_tokens > 0


def test_dropped_connection_is_a_connection_error_not_a_timeout(sim):
    c = client(sim, "drop", EndpointProfile(rate_drop=1.0))
    with pytest.raises(openai.APIConnectionError) as info:
        extract(c)

    assert not isinstance(info.value, openai.APITimeoutError)
    assert [(r.status, r.fault) for r in sim.requests("drop")] == [(0, "dropped")]
    assert sim.stats()["drop"]["by_status"] == {"0": 1}


def test_truncated_rate_cuts_the_json_mid_way(sim):
    reply = extract(client(sim, "cut", EndpointProfile(rate_truncated=1.0)))

    assert reply.choices[0].finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads(reply.choices[0].message.content)
    assert sim.requests("cut")[0].fault == "truncated"


def test_refusal_sets_message_refusal_and_no_content(sim):
    c = client(sim, "prude", EndpointProfile(rate_refusal=1.0))
    reply = extract(c)
    message = reply.choices[0].message
    assert message.content is None and "can't help" in (message.refusal or "")
    assert reply.choices[0].finish_reason == "stop"
    parsed = c.chat.completions.parse(model=MODEL, messages=user(), response_format=Extraction)
    assert parsed.choices[0].message.parsed is None and parsed.choices[0].message.refusal


def test_script_is_followed_then_the_draws_apply(sim):
    script = ["rate_limited", "none", "auth", "bad_request", "invalid", "server_error"]
    c = client(sim, "scripted", EndpointProfile(script=script, rate_503=1.0))
    outcomes = []
    for _ in range(len(script) + 2):
        try:
            content = extract(c).choices[0].message.content
            outcomes.append("valid" if _fits(content) else "invalid")
        except openai.APIStatusError as exc:
            outcomes.append(exc.status_code)

    assert outcomes == [429, "valid", 401, 400, "invalid", 500, 503, 503]
    assert [r.fault for r in sim.requests("scripted")] == [*script, "overloaded", "overloaded"]


def _fits(content: str | None) -> bool:
    try:
        Extraction.model_validate_json(content or "")
    except ValidationError:
        return False
    return True


def test_fault_rates_must_sum_to_at_most_one():
    with pytest.raises(ValidationError):
        EndpointProfile(rate_429=0.5, rate_drop=0.3, rate_refusal=0.3)
    with pytest.raises(ValidationError):
        EndpointProfile(script=["no_such_fault"])
    assert EndpointProfile(rate_429=0.5, rate_drop=0.5).rate_drop == 0.5


# -- gemini (OpenAI-compatible, Google error bodies) ---------------------------------------


def gemini(sim: SimulatorServer, name: str, profile: EndpointProfile | None = None, **kw: Any):
    profile = (profile or EndpointProfile()).model_copy(update={"protocol": "gemini"})
    return client(sim, name, profile, **kw)


def test_gemini_answers_validate_strictly(sim):
    reply = extract(gemini(sim, "gemini-ok"))
    Extraction.model_validate_json(reply.choices[0].message.content)
    assert reply.usage.total_tokens > 0 and reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("fault", "exc_type", "status", "rpc_status"),
    [
        ("rate_limited", openai.RateLimitError, 429, "RESOURCE_EXHAUSTED"),
        ("server_error", openai.InternalServerError, 500, "INTERNAL"),
        ("overloaded", openai.InternalServerError, 503, "UNAVAILABLE"),
        ("auth", openai.AuthenticationError, 401, "UNAUTHENTICATED"),
        ("bad_request", openai.BadRequestError, 400, "INVALID_ARGUMENT"),
    ],
)
def test_gemini_array_error_bodies_still_map_by_status(sim, fault, exc_type, status, rpc_status):
    with pytest.raises(exc_type) as info:
        extract(gemini(sim, f"gemini-{fault}", EndpointProfile(script=[fault])))

    assert info.value.status_code == status
    (entry,) = info.value.body
    assert entry["error"]["code"] == status and entry["error"]["status"] == rpc_status


def test_gemini_refusal_is_plain_text(sim):
    reply = extract(gemini(sim, "gemini-prude", EndpointProfile(rate_refusal=1.0)))
    content = reply.choices[0].message.content
    assert "can't help" in content and reply.choices[0].message.refusal is None
    with pytest.raises(ValueError):
        json.loads(content)


def test_gemini_truncated_and_invalid_answers(sim):
    cut = extract(gemini(sim, "gemini-cut", EndpointProfile(rate_truncated=1.0)))
    assert cut.choices[0].finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads(cut.choices[0].message.content)
    liar = extract(gemini(sim, "gemini-liar", EndpointProfile(script=["invalid"])))
    assert not _fits(liar.choices[0].message.content)
    json.loads(liar.choices[0].message.content)


def test_gemini_timeout_and_drop(sim):
    slow = gemini(sim, "gemini-hang", EndpointProfile(script=["timeout"], hang_s=5), timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        extract(slow)
    with pytest.raises(openai.APIConnectionError):
        extract(gemini(sim, "gemini-drop", EndpointProfile(script=["dropped"])))


@pytest.mark.parametrize("param", ["max_completion_tokens", "max_tokens"])
def test_small_max_tokens_truncates_with_finish_reason_length(sim, param):
    c = client(sim, f"short-{param}")
    reply = extract(c, **{param: 5})

    assert reply.choices[0].finish_reason == "length"
    assert len(reply.choices[0].message.content) == 20
    assert reply.usage.completion_tokens == 5
    assert sim.requests(f"short-{param}")[0].fault == "truncated"
    assert extract(c, **{param: 4000}).choices[0].finish_reason == "stop"


# Fake keys in OpenAI's shape (the masking format depends on it), assembled here so no
# key-looking literal is tracked.
FAKE_PREFIX = "sk" + "-"


def test_wrong_api_key_gets_401_with_masked_key(sim):
    right, wrong = FAKE_PREFIX + "right-key-0123456789", FAKE_PREFIX + "wrong-key-abcdefghij"
    c = client(sim, "locked", EndpointProfile(api_key=right), api_key=wrong)
    with pytest.raises(openai.AuthenticationError) as info:
        extract(c)

    assert info.value.code == "invalid_api_key"
    assert "sk-wr****ghij" in info.value.message
    assert wrong not in info.value.message
    assert sim.requests("locked")[0].fault == "auth"
    base_url = sim.add_endpoint("locked", EndpointProfile(api_key=right))
    ok = openai.OpenAI(base_url=base_url, api_key=right, max_retries=0)
    assert extract(ok).choices[0].finish_reason == "stop"


def test_careless_provider_echoes_the_key(sim):
    key = FAKE_PREFIX + "leaky-secret-key-987654"
    profile = EndpointProfile(api_key=FAKE_PREFIX + "right-key-0123456789", echo_key_in_errors=True)
    with pytest.raises(openai.AuthenticationError) as info:
        extract(client(sim, "careless", profile, api_key=key))
    assert key in info.value.message and key in str(info.value)


def test_malformed_requests_get_openai_shaped_400_and_unknown_endpoints_404(sim):
    sim.add_endpoint("strict-input")
    url = f"{sim.url}/strict-input/v1/chat/completions"
    assert http("POST", url, {"model": MODEL})[0] == 400
    status, body = http("POST", url, {"model": MODEL, "messages": user(), "max_tokens": 0})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client(sim, "strict-input").chat.completions.create(model=MODEL, messages=[])
    missing = openai.OpenAI(base_url=f"{sim.url}/nowhere/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        missing.chat.completions.create(model=MODEL, messages=user())
    assert [r.fault for r in sim.requests("strict-input")] == ["bad_request"] * 3


# -- accounting ----------------------------------------------------------------------------


def test_usage_follows_the_documented_formula(sim):
    system, question = "s" * 13, "q" * 40
    reply = client(sim, "usage").chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
    )
    expected_prompt = (math.ceil(13 / 4) + 4) + (math.ceil(40 / 4) + 4) + 3  # 8 + 14 + 3
    expected_completion = math.ceil(len(reply.choices[0].message.content) / 4)

    assert reply.usage.prompt_tokens == expected_prompt == 25
    assert reply.usage.completion_tokens == expected_completion
    assert reply.usage.total_tokens == expected_prompt + expected_completion
    assert reply.usage.prompt_tokens_details.cached_tokens == 0


def test_records_and_tokens_served(sim):
    served = client(sim, "ledger-a")
    refused = client(sim, "ledger-b", EndpointProfile(rate_429=1.0))
    replies = [extract(served, text=t) for t in ("Alpha one.", "Beta two.")]
    with pytest.raises(openai.RateLimitError):
        extract(refused)

    records = sim.requests("ledger-a")
    assert [r.prompt_sha256 for r in records] == [
        hashlib.sha256(t.encode()).hexdigest() for t in ("Alpha one.", "Beta two.")
    ]
    assert all(r.model == MODEL and r.status == 200 and not r.is_repair for r in records)
    assert sim.tokens_served("ledger-a") == (
        sum(r.usage.prompt_tokens for r in replies),
        sum(r.usage.completion_tokens for r in replies),
    )
    assert sim.tokens_served("ledger-b") == (0, 0)
    assert sim.requests("ledger-b")[0].status == 429
    assert records[0].received_at <= records[1].received_at


def test_reset_clears_records_and_counters_but_keeps_profiles():
    with SimulatorServer() as local:
        c = client(local, "again", EndpointProfile(fail_first=1))
        with pytest.raises(openai.InternalServerError):
            extract(c)
        local.reset()
        assert local.requests() == []
        with pytest.raises(openai.InternalServerError):  # fail_first counts afresh
            extract(c)
        assert extract(c).choices[0].finish_reason == "stop"
        assert local.tokens_served()[1] > 0


def test_stats_are_running_totals_that_follow_amends_and_resets():
    from pipeline.simulator import Fault, RequestRecord
    from pipeline.simulator.state import SimulatorState

    state = SimulatorState()

    def record(status: int, fault: Fault, completion: int = 0) -> RequestRecord:
        return RequestRecord("e", "m", 0.0, status, fault, 10, completion, "", False)

    for _ in range(1000):
        state.record(record(200, "none", 5))
    ticket = state.record(record(0, "timeout"))
    assert state.stats()["e"]["by_status"] == {"200": 1000, "0": 1}
    state.amend(ticket, record(200, "timeout", 7))
    assert state.stats()["e"] == {
        "requests": 1001,
        "by_fault": {"none": 1000, "timeout": 1},
        "by_status": {"200": 1001},
        "prompt_tokens": 10010,
        "completion_tokens": 5007,
    }
    assert state.tokens_served("e") == (10010, 5007) and state.tokens_served("x") == (0, 0)
    state.reset()
    state.amend(ticket, record(500, "server_error"))  # a ticket from before the reset: ignored
    assert state.stats() == {} and state.records() == []


# -- control surface and server ------------------------------------------------------------


def test_put_endpoint_registers_a_profile_over_http(sim):
    status, body = http("PUT", f"{sim.url}/_sim/endpoints/remote", {"rate_500": 1.0, "seed": 3})
    assert status == 200 and body["base_url"] == f"{sim.url}/remote/v1"
    c = openai.OpenAI(base_url=body["base_url"], api_key="sk-test", max_retries=0)
    with pytest.raises(openai.InternalServerError):
        extract(c)

    assert http("PUT", f"{sim.url}/_sim/endpoints/bad", {"rate_500": 2})[0] == 400
    assert http("PUT", f"{sim.url}/_sim/endpoints/bad", {"no_such_field": 1})[0] == 400
    status, records = http("GET", f"{sim.url}/_sim/requests?endpoint=remote")
    assert status == 200 and [r["status"] for r in records] == [500]
    status, health = http("GET", f"{sim.url}/_sim/health")
    assert health["status"] == "ok" and "remote" in health["endpoints"]


@pytest.mark.parametrize(
    ("protocol", "suffix"),
    [("openai", "/v1"), ("gemini", "/v1"), ("anthropic", ""), ("mistral", "")],
)
def test_base_url_rule_per_protocol(sim, protocol, suffix):
    name = f"rule-{protocol}"
    status, body = http("PUT", f"{sim.url}/_sim/endpoints/{name}", {"protocol": protocol})
    assert status == 200 and body["base_url"] == f"{sim.url}/{name}{suffix}"
    assert sim.base_url(name) == body["base_url"]
    assert sim.add_endpoint(name, EndpointProfile(protocol=protocol)) == body["base_url"]


def test_stats_counts_by_fault_and_status_and_sums_tokens(sim):
    c = client(sim, "counted", EndpointProfile(script=["rate_limited", "none", "server_error"]))
    replies = []
    for _ in range(4):
        with contextlib.suppress(openai.APIStatusError):
            replies.append(extract(c))
    status, stats = http("GET", f"{sim.url}/_sim/stats")

    counted = stats["endpoints"]["counted"]
    assert status == 200 and counted == sim.stats()["counted"]
    assert counted["requests"] == 4
    assert counted["by_fault"] == {"rate_limited": 1, "none": 2, "server_error": 1}
    assert counted["by_status"] == {"429": 1, "200": 2, "500": 1}
    assert (counted["prompt_tokens"], counted["completion_tokens"]) == (
        sum(r.usage.prompt_tokens for r in replies),
        sum(r.usage.completion_tokens for r in replies),
    )


def test_server_binds_loopback_only(sim):
    assert sim.address[0] == "127.0.0.1"
    assert sim.url == f"http://127.0.0.1:{sim.address[1]}"
    for host in ("0.0.0.0", "192.168.1.10", "::1", "example.com"):
        with pytest.raises(ValueError):
            SimulatorServer(host=host)


def test_latency_is_concurrent(sim):
    base_url = sim.add_endpoint("slow", EndpointProfile(latency_ms=(100, 100)))

    async def burst() -> list[Any]:
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="sk-test", max_retries=0, _strict_response_validation=True
        ) as c:
            calls = [
                c.chat.completions.create(model=MODEL, messages=user(f"Chunk {i}."))
                for i in range(20)
            ]
            return await asyncio.gather(*calls)

    started = time.perf_counter()
    replies = asyncio.run(burst())
    elapsed = time.perf_counter() - started

    assert len(replies) == 20
    assert 0.1 <= elapsed < 1.0  # 20 × 100 ms served side by side, not one after another


def test_keep_alive_requests_do_not_wait_for_delayed_acks(sim):
    c = client(sim, "brisk")
    c.chat.completions.create(model=MODEL, messages=user())  # opens the connection
    started = time.perf_counter()
    for i in range(10):
        c.chat.completions.create(model=MODEL, messages=user(f"Chunk {i}."))
    # Without TCP_NODELAY on accepted sockets each call took ~44 ms (Nagle + delayed ACK).
    assert time.perf_counter() - started < 0.3


def test_serve_forever_reports_urls_and_serves():
    ready: list[dict[str, str]] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=serve_forever,
        args=({"one": EndpointProfile()},),
        kwargs={"on_ready": ready.append, "stop": stop},
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 5
    while not ready and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        c = openai.OpenAI(base_url=ready[0]["one"], api_key="sk-test", max_retries=0)
        assert c.chat.completions.create(model=MODEL, messages=user()).choices
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


# -- the schema-instance generator ---------------------------------------------------------


def test_generator_covers_json_schema_features():
    jsonschema = pytest.importorskip("jsonschema")
    from pipeline.simulator.schema_gen import compiled_schema

    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["doc", "tags", "score", "count", "when", "kind", "tree", "misc"],
        "properties": {
            "doc": {"$ref": "#/$defs/Doc"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 4, "maxItems": 5},
            "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.5},
            "count": {"type": "integer", "minimum": 10, "maximum": 20, "multipleOf": 3},
            "when": {"type": "string", "format": "date-time"},
            "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
            "tree": {"$ref": "#/definitions/Node"},
            "misc": {"type": ["string", "null"], "minLength": 50, "maxLength": 60},
        },
        "$defs": {
            "Doc": {
                "type": "object",
                "properties": {"title": {"type": "string", "maxLength": 10}, "id": {}},
                "required": ["title"],
            }
        },
        "definitions": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/definitions/Node"}},
                },
                "required": ["name", "children"],
            }
        },
    }
    compiled = compiled_schema(schema)
    for text in (TEXT, "", "x"):
        instance = compiled.instance(text)
        jsonschema.validate(instance, schema, format_checker=jsonschema.FormatChecker())
    for seed in range(10):
        broken = compiled.invalid_instance(TEXT, random.Random(seed))
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


@pytest.mark.parametrize(
    "module",
    [
        "tokens",
        "hints",
        "fillers",
        "schema_gen",
        "state",
        "wire",
        "wire_openai",
        "wire_gemini",
        "wire_anthropic",
        "wire_mistral",
        "protocols",
        "answers",
        "faults",
        "exchange",
        "batch_jobs",
        "batch_lines",
        "app",
    ],
)
def test_docstring_examples_hold(module):
    result = doctest.testmod(importlib.import_module(f"pipeline.simulator.{module}"))
    assert result.attempted > 0 and result.failed == 0


def test_profile_docstring_examples_hold():
    result = doctest.testmod(importlib.import_module("pipeline.sim_profiles"))
    assert result.attempted > 0 and result.failed == 0


def test_the_config_reads_profiles_without_importing_the_simulators_servers():
    code = "import sys, pipeline.config; print('pipeline.simulator' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
