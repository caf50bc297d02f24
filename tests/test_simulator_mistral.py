"""The Mistral simulator, exercised with the real ``mistralai`` SDK over loopback.

The SDK always validates answers against ``mistralai.client.models.ChatCompletionResponse``
(a stray shape raises ``ResponseValidationError``); errors come as ``SDKError`` with the
status, transport failures as raw ``httpx2`` exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import httpx2
import pytest
from mistralai.client import Mistral, errors, models
from pydantic import ValidationError

from pipeline.simulator import EndpointProfile, SimulatorServer
from tests.test_simulator import TEXT, Extraction, schema_format

MODEL = "mistral-small-latest"
USER = [{"role": "user", "content": TEXT}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


def client(sim: SimulatorServer, name: str, profile: EndpointProfile | None = None, **kw: Any):
    """A client for a fresh mistral endpoint ``name``."""
    profile = (profile or EndpointProfile()).model_copy(update={"protocol": "mistral"})
    return Mistral(
        api_key=kw.pop("api_key", "mistral-test"), server_url=sim.add_endpoint(name, profile), **kw
    )


def extract(c: Mistral, **kw: Any) -> models.ChatCompletionResponse:
    return c.chat.complete(model=MODEL, messages=USER, response_format=schema_format(), **kw)


def status_of(call: Any) -> int:
    with pytest.raises(errors.SDKError) as info:
        call()
    return info.value.status_code


# -- answers -------------------------------------------------------------------------------


def test_structured_answer_matches_the_sdk_response_type(sim):
    reply = extract(client(sim, "structured"))

    assert isinstance(reply, models.ChatCompletionResponse)
    assert reply.object == "chat.completion" and reply.model == MODEL
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message is not None
    assert choice.message.role == "assistant" and choice.message.prefix is False
    assert choice.message.tool_calls is None
    result = Extraction.model_validate_json(choice.message.content)
    assert result.effective_date == date(2024, 3, 15)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_raw_body_has_exactly_the_documented_fields(sim):
    client(sim, "raw")
    body = {"model": MODEL, "messages": USER, "response_format": schema_format()}
    response = httpx.post(f"{sim.base_url('raw')}/v1/chat/completions", json=body, timeout=5)

    data = response.json()
    assert set(data) == {"id", "object", "model", "created", "choices", "usage"}
    assert set(data["choices"][0]["message"]) == {"role", "content", "tool_calls", "prefix"}
    assert set(data["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    models.ChatCompletionResponse.model_validate(data)
    assert response.headers["x-request-id"]


def test_sdk_parse_helper_accepts_answers(sim):
    reply = client(sim, "parse-helper").chat.parse(
        response_format=Extraction, model=MODEL, messages=USER
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Extraction) and parsed.payment.currency == "EUR"


def test_content_chunks_count_like_strings(sim):
    c = client(sim, "chunks")
    reply = c.chat.complete(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "q" * 40}]}]
    )
    assert reply.usage.prompt_tokens == (40 // 4 + 4) + 3


# -- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "type_"),
    [
        ("rate_limited", 429, "rate_limited"),
        ("server_error", 500, "internal_server_error"),
        ("overloaded", 503, "service_unavailable"),
        ("auth", 401, "unauthorized"),
        ("bad_request", 400, "invalid_request_error"),
    ],
)
def test_error_faults_raise_sdk_error_with_the_status(sim, fault, status, type_):
    c = client(sim, f"err-{fault}", EndpointProfile(script=[fault], retry_after_s=7))
    with pytest.raises(errors.SDKError) as info:
        extract(c)

    exc = info.value
    assert exc.status_code == status
    body = json.loads(exc.body)
    assert body["object"] == "error" and body["type"] == type_ and body["message"]
    assert exc.headers["x-request-id"]
    if fault == "rate_limited":
        assert exc.headers["retry-after"] == "7"
    assert extract(c).choices[0].finish_reason == "stop"  # the script is spent


def test_timeout_and_dropped_connection_raise_httpx2_errors(sim):
    slow = client(sim, "hang", EndpointProfile(rate_timeout=1.0, hang_s=5), timeout_ms=500)
    with pytest.raises(httpx2.TimeoutException):
        extract(slow)
    cut = client(sim, "drop", EndpointProfile(rate_drop=1.0))
    with pytest.raises(httpx2.RemoteProtocolError):
        extract(cut)
    assert [r.fault for r in sim.requests("drop")] == ["dropped"]


def test_truncated_answer_is_cut_json_with_finish_reason_length(sim):
    reply = extract(client(sim, "cut", EndpointProfile(rate_truncated=1.0)))

    assert reply.choices[0].finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads(reply.choices[0].message.content)
    assert extract(client(sim, "cut-short"), max_tokens=5).choices[0].finish_reason == "length"


def test_refusal_is_a_plain_sentence_not_json(sim):
    reply = extract(client(sim, "prude", EndpointProfile(rate_refusal=1.0)))

    content = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop" and "can't help" in content
    with pytest.raises(ValueError):
        json.loads(content)
    assert sim.requests("prude")[0].fault == "refusal"


def test_invalid_answer_parses_but_breaks_the_schema(sim):
    reply = extract(client(sim, "liar", EndpointProfile(invalid_rate=1.0)))
    json.loads(reply.choices[0].message.content)
    with pytest.raises(ValidationError):
        Extraction.model_validate_json(reply.choices[0].message.content)


def test_wrong_key_is_401(sim):
    c = client(sim, "locked", EndpointProfile(api_key="mistral-right"), api_key="mistral-wrong")
    assert status_of(lambda: extract(c)) == 401
    ok = client(sim, "locked", EndpointProfile(api_key="mistral-right"), api_key="mistral-right")
    assert extract(ok).choices


def test_unknown_endpoint_is_404(sim):
    c = Mistral(api_key="k", server_url=f"{sim.url}/nowhere")
    assert status_of(lambda: extract(c)) == 404


def test_json_schema_request_reaches_the_generator(sim):
    c = client(sim, "schema")
    schema = {"type": "object", "properties": {"year": {"type": "integer"}}, "required": ["year"]}
    reply = c.chat.complete(
        model=MODEL,
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Y", "schema": schema, "strict": True},
        },
    )
    assert json.loads(reply.choices[0].message.content) == {"year": 2024}
