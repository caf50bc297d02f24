"""The Anthropic Messages simulator, exercised with the real ``anthropic`` SDK over loopback.

Every client runs with ``_strict_response_validation=True``, and answers are re-validated
with ``anthropic.types.Message`` from the raw JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message
from pydantic import ValidationError

from pipeline.simulator import EndpointProfile, SimulatorServer
from tests.test_simulator import TEXT, Extraction, strict_schema

MODEL = "claude-sonnet-4-5"
USER = [{"role": "user", "content": TEXT}]
FORMAT = {"format": {"type": "json_schema", "schema": strict_schema(Extraction)}}
TOOL = {"name": "record_extraction", "input_schema": strict_schema(Extraction)}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


def client(sim: SimulatorServer, name: str, profile: EndpointProfile | None = None, **kw: Any):
    """A strict client for a fresh anthropic endpoint ``name``."""
    profile = (profile or EndpointProfile()).model_copy(update={"protocol": "anthropic"})
    options: dict[str, Any] = {"api_key": "sk-ant-test", "max_retries": 0, **kw}
    base_url = sim.add_endpoint(name, profile)
    return anthropic.Anthropic(base_url=base_url, _strict_response_validation=True, **options)


def structured(c: anthropic.Anthropic, max_tokens: int = 2000, **kw: Any) -> Message:
    return c.messages.create(
        model=MODEL, max_tokens=max_tokens, messages=USER, output_config=FORMAT, **kw
    )


def forced_tool(c: anthropic.Anthropic, max_tokens: int = 2000) -> Message:
    return c.messages.create(
        model=MODEL,
        max_tokens=max_tokens,
        messages=USER,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": TOOL["name"]},
    )


def raw_post(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(url, json=body, headers=headers, timeout=5)


# -- answers -------------------------------------------------------------------------------


def test_output_config_answer_is_a_text_block_of_fitting_json(sim):
    reply = structured(client(sim, "json-schema"), system="Extract the fields.")

    assert reply.type == "message" and reply.role == "assistant" and reply.model == MODEL
    assert reply.id.startswith("msg_") and reply.stop_reason == "end_turn"
    assert reply.stop_sequence is None
    (block,) = reply.content
    assert block.type == "text"
    result = Extraction.model_validate_json(block.text)
    assert result.effective_date == date(2024, 3, 15)
    assert reply.usage.cache_creation_input_tokens == reply.usage.cache_read_input_tokens == 0
    Message.model_validate(reply.to_dict())  # the SDK's own type accepts the answer as sent


def test_raw_answer_validates_against_the_sdk_message_type(sim):
    base_url = client(sim, "raw-json").base_url
    body = {"model": MODEL, "max_tokens": 2000, "messages": USER, "output_config": FORMAT}
    response = raw_post(f"{base_url}v1/messages", body)

    assert response.status_code == 200 and response.headers["request-id"].startswith("req_")
    message = Message.model_validate(response.json(), strict=False)
    assert {"input_tokens", "output_tokens", "cache_creation_input_tokens"} <= set(
        response.json()["usage"]
    )
    assert message.usage.input_tokens > 0


def test_sdk_parse_helper_accepts_answers(sim):
    reply = client(sim, "parse-helper").messages.parse(
        model=MODEL, max_tokens=2000, messages=USER, output_format=Extraction
    )
    assert reply.parsed_output is not None
    assert reply.parsed_output.payment.currency == "EUR"


def test_forced_tool_answers_a_tool_use_block(sim):
    reply = forced_tool(client(sim, "tool"))

    assert reply.stop_reason == "tool_use"
    (block,) = reply.content
    assert block.type == "tool_use" and block.name == TOOL["name"]
    assert block.id.startswith("toolu_")
    assert Extraction.model_validate(block.input).parties


def test_tool_choice_any_uses_the_only_tool(sim):
    c = client(sim, "tool-any")
    reply = c.messages.create(
        model=MODEL, max_tokens=2000, messages=USER, tools=[TOOL], tool_choice={"type": "any"}
    )
    assert reply.content[0].type == "tool_use"


def test_plain_text_and_usage_count_the_system_prompt(sim):
    c = client(sim, "plain")
    system, question = "s" * 13, "q" * 40
    reply = c.messages.create(
        model=MODEL,
        max_tokens=100,
        system=system,
        messages=[{"role": "user", "content": [{"type": "text", "text": question}]}],
    )
    # tokens.py: (ceil(13/4) + 4) + (ceil(40/4) + 4) + 3, the system prompt as a message
    assert reply.usage.input_tokens == 25
    assert reply.content[0].type == "text" and reply.content[0].text == question
    assert reply.usage.output_tokens == 10
    assert sim.tokens_served("plain") == (25, 10)


def test_repair_conversation_answers_from_the_first_user_message(sim):
    c = client(sim, "repair")
    original = structured(c).content[0].text
    messages = [
        *USER,
        {"role": "assistant", "content": [{"type": "text", "text": '{"summary": 1}'}]},
        {"role": "user", "content": "That failed validation; answer again."},
    ]
    repaired = c.messages.create(
        model=MODEL, max_tokens=2000, messages=messages, output_config=FORMAT
    )
    assert repaired.content[0].text == original
    assert [r.is_repair for r in sim.requests("repair")] == [False, True]


# -- faults --------------------------------------------------------------------------------


def test_rate_limit_raises_rate_limit_error_with_retry_after(sim):
    with pytest.raises(anthropic.RateLimitError) as info:
        structured(client(sim, "limited", EndpointProfile(rate_429=1.0, retry_after_s=2.5)))

    exc = info.value
    assert exc.status_code == 429 and exc.type == "rate_limit_error"
    assert exc.response.headers["retry-after"] == "3"  # whole seconds, rounded up
    assert exc.request_id and exc.request_id.startswith("req_")
    assert exc.body["type"] == "error"


def test_server_error_is_api_error_500(sim):
    with pytest.raises(anthropic.InternalServerError) as info:
        structured(client(sim, "broken", EndpointProfile(rate_500=1.0)))
    assert info.value.status_code == 500 and info.value.type == "api_error"


def test_overloaded_is_529_overloaded_error(sim):
    with pytest.raises(anthropic.OverloadedError) as info:
        structured(client(sim, "busy", EndpointProfile(rate_503=1.0)))

    assert info.value.status_code == 529
    assert info.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert isinstance(info.value, anthropic.InternalServerError)
    assert sim.requests("busy")[0].fault == "overloaded"


def test_timeout_and_dropped_connection_surface_as_sdk_errors(sim):
    slow = client(sim, "hang", EndpointProfile(rate_timeout=1.0, hang_s=5), timeout=0.5)
    with pytest.raises(anthropic.APITimeoutError):
        structured(slow)
    cut = client(sim, "drop", EndpointProfile(rate_drop=1.0))
    with pytest.raises(anthropic.APIConnectionError) as info:
        structured(cut)

    assert not isinstance(info.value, anthropic.APITimeoutError)
    assert [(r.status, r.fault) for r in sim.requests("drop")] == [(0, "dropped")]
    assert [(r.status, r.fault) for r in sim.requests("hang")] == [(0, "timeout")]


def test_truncated_text_stops_at_max_tokens(sim):
    c = client(sim, "cut", EndpointProfile(rate_truncated=1.0))
    reply = structured(c)

    assert reply.stop_reason == "max_tokens"
    with pytest.raises(ValueError):
        json.loads(reply.content[0].text)
    assert sim.requests("cut")[0].fault == "truncated"
    small = structured(client(sim, "cut-naturally"), max_tokens=5)
    assert small.stop_reason == "max_tokens" and len(small.content[0].text) == 20
    assert small.usage.output_tokens == 5


def test_truncated_tool_input_keeps_only_its_first_properties(sim):
    reply = forced_tool(client(sim, "cut-tool", EndpointProfile(rate_truncated=1.0)))

    assert reply.stop_reason == "max_tokens"
    block = reply.content[0]
    assert block.type == "tool_use"
    assert 0 < len(block.input) < len(Extraction.model_fields)
    with pytest.raises(ValidationError):
        Extraction.model_validate(block.input)


def test_refusal_stops_with_refusal_and_a_short_text(sim):
    reply = structured(client(sim, "prude", EndpointProfile(rate_refusal=1.0)))

    assert reply.stop_reason == "refusal"
    assert reply.content[0].type == "text" and "can't help" in reply.content[0].text
    tool_reply = forced_tool(client(sim, "prude-tool", EndpointProfile(rate_refusal=1.0)))
    assert tool_reply.stop_reason == "refusal" and tool_reply.content[0].type == "text"


def test_invalid_answers_break_the_schema(sim):
    reply = structured(client(sim, "liar", EndpointProfile(invalid_first=1)))
    with pytest.raises(ValidationError):
        Extraction.model_validate_json(reply.content[0].text)
    tool_reply = forced_tool(client(sim, "liar-tool", EndpointProfile(invalid_rate=1.0)))
    with pytest.raises(ValidationError):
        Extraction.model_validate(tool_reply.content[0].input)


def test_api_key_is_read_from_x_api_key_and_bearer(sim):
    key, wrong = "sk-" + "ant-right-key-0123", "sk-" + "ant-wrong-1234"  # fakes, assembled
    with pytest.raises(anthropic.AuthenticationError) as info:
        structured(client(sim, "locked", EndpointProfile(api_key=key), api_key=wrong))
    assert info.value.type == "authentication_error"
    assert structured(client(sim, "locked", EndpointProfile(api_key=key), api_key=key)).content

    url = f"{sim.base_url('locked')}/v1/messages"
    body = {"model": MODEL, "max_tokens": 50, "messages": USER}
    assert raw_post(url, body, **{"x-api-key": key}).status_code == 200
    assert raw_post(url, body, **{"x-api-key": "nope"}).status_code == 401
    assert raw_post(url, body).json()["error"]["type"] == "authentication_error"


def test_script_then_fail_first_then_draws_is_deterministic(sim):
    profile = EndpointProfile(
        script=["overloaded", "none", "rate_limited", "auth", "bad_request"], fail_first=6
    )
    c = client(sim, "scripted", profile)
    outcomes = []
    for _ in range(7):
        try:
            structured(c)
            outcomes.append("ok")
        except anthropic.APIStatusError as exc:
            outcomes.append(type(exc).__name__)

    assert outcomes == [
        "OverloadedError",
        "ok",
        "RateLimitError",
        "AuthenticationError",
        "BadRequestError",
        "InternalServerError",  # fail_first covers request 5
        "ok",
    ]


def test_malformed_requests_and_wrong_routes(sim):
    c = client(sim, "strict-input")
    url = f"{sim.base_url('strict-input')}/v1/messages"
    no_max = raw_post(url, {"model": MODEL, "messages": USER})
    assert no_max.status_code == 400
    assert no_max.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    with pytest.raises(anthropic.BadRequestError):
        c.messages.create(model=MODEL, max_tokens=10, messages=[])
    missing = anthropic.Anthropic(base_url=f"{sim.url}/nowhere", api_key="k", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as info:
        missing.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert info.value.type == "not_found_error"
    wrong_route = raw_post(f"{sim.url}/strict-input/v1/chat/completions", {"model": MODEL})
    assert wrong_route.status_code == 404 and wrong_route.json()["type"] == "error"
