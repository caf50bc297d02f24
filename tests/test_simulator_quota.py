"""RPM/TPM sliding windows: the vendors' 429s, ``retry-after`` and rate-limit headers.

The server's clock is injected, so a minute passes in no time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest
from mistralai.client import Mistral, errors

from pipeline.simulator import EndpointProfile, SimulatorServer

MODEL = "m"


@pytest.fixture
def sim(clocked_simulator: SimulatorServer) -> SimulatorServer:
    return clocked_simulator


def user(text: str = "Hello there. This is a chunk.") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def openai_client(sim: SimulatorServer, name: str, profile: EndpointProfile) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sim.add_endpoint(name, profile),
        api_key="sk-test",
        max_retries=0,
        _strict_response_validation=True,
    )


def raw_create(c: openai.OpenAI, **kw: Any) -> Any:
    kw = {"model": MODEL, "messages": user(), **kw}
    return c.chat.completions.with_raw_response.create(**kw)


def test_rpm_window_counts_down_then_answers_429_with_retry_after(sim, clock):
    c = openai_client(sim, "rpm", EndpointProfile(rpm=5))
    remaining, resets = [], []
    for _ in range(5):
        raw = raw_create(c)
        raw.parse()  # validates strictly
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        resets.append(raw.headers["x-ratelimit-reset-requests"])
        assert raw.headers["x-ratelimit-limit-requests"] == "5"
        clock.now += 1
    assert remaining == ["4", "3", "2", "1", "0"]
    assert resets == ["1m0s"] * 5  # the newest admission leaves the window a minute later

    clock.now += 0.5  # 5.5 s after the first request
    with pytest.raises(openai.RateLimitError) as info:
        raw_create(c)
    headers = info.value.response.headers
    assert headers["retry-after-ms"] == "54500"  # the first request leaves at 60 s
    assert headers["retry-after"] == "55"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.type == "requests" and info.value.code == "rate_limit_exceeded"
    assert "Limit 5, Used 5, Requested 1" in info.value.message

    clock.now = 1000.0 + 60  # the first admission has left the window
    assert raw_create(c).headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        raw_create(c)
    assert [r.status for r in sim.requests("rpm")] == [200] * 5 + [429, 200, 429]


def test_tpm_counts_prompt_plus_max_output_tokens(sim, clock):
    c = openai_client(sim, "tpm", EndpointProfile(tpm=100))
    text = "x" * 40  # (10 + 4) + 3 = 17 prompt tokens; with max_tokens 30 a request costs 47
    first = raw_create(c, messages=user(text), max_tokens=30)
    clock.now += 10
    second = raw_create(c, messages=user(text), max_tokens=30)

    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    assert [first.headers["x-ratelimit-remaining-tokens"]] == ["53"]
    assert second.headers["x-ratelimit-remaining-tokens"] == "6"
    assert "x-ratelimit-limit-requests" not in first.headers  # no rpm set
    with pytest.raises(openai.RateLimitError) as info:
        raw_create(c, messages=user(text), max_tokens=30)
    assert info.value.type == "tokens"
    assert info.value.response.headers["retry-after-ms"] == "50000"  # when the first leaves
    clock.now += 50
    after = raw_create(c, messages=user(text), max_tokens=30)
    assert after.headers["x-ratelimit-remaining-tokens"] == "6"

    with pytest.raises(openai.RateLimitError) as too_big:
        raw_create(c, messages=user(text), max_tokens=500)
    assert "Request too large" in too_big.value.message
    assert too_big.value.response.headers["retry-after"] == "60"


def test_quota_refusals_do_not_consume_the_script(sim, clock):
    c = openai_client(sim, "scripted", EndpointProfile(rpm=1, script=["server_error", "none"]))
    with pytest.raises(openai.InternalServerError):
        raw_create(c)
    with pytest.raises(openai.RateLimitError):
        raw_create(c)
    clock.now += 60
    assert raw_create(c).parse().choices[0].finish_reason == "stop"
    assert [r.fault for r in sim.requests("scripted")] == ["server_error", "rate_limited", "none"]


def test_no_quota_no_rate_limit_headers(sim):
    raw = raw_create(openai_client(sim, "free", EndpointProfile()))
    assert not [h for h in raw.headers if "ratelimit" in h]


def test_refused_requests_carry_the_headers_without_consuming(sim):
    c = openai_client(sim, "keyed", EndpointProfile(rpm=3, api_key="sk-right-key-000000"))
    with pytest.raises(openai.AuthenticationError) as info:
        raw_create(c)
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "3"


def test_anthropic_headers_and_429(sim, clock):
    profile = EndpointProfile(protocol="anthropic", rpm=2, tpm=1000)
    c = anthropic.Anthropic(
        base_url=sim.add_endpoint("claude", profile),
        api_key="k",
        max_retries=0,
        _strict_response_validation=True,
    )

    def create() -> Any:
        return c.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=user())

    before = datetime.now(UTC)
    raw = create()
    raw.parse()
    h = raw.headers
    assert (
        h["anthropic-ratelimit-requests-limit"],
        h["anthropic-ratelimit-requests-remaining"],
    ) == (
        "2",
        "1",
    )
    reset = datetime.fromisoformat(h["anthropic-ratelimit-requests-reset"])
    assert 59 <= (reset - before).total_seconds() <= 62
    assert h["anthropic-ratelimit-tokens-limit"] == "1000"
    # max_tokens + prompt tokens (29 characters: 8 + 4 + 3)
    assert int(h["anthropic-ratelimit-tokens-remaining"]) == 1000 - 100 - 15
    assert "x-ratelimit-limit-requests" not in h
    create()
    clock.now += 20
    with pytest.raises(anthropic.RateLimitError) as info:
        create()
    assert info.value.response.headers["retry-after"] == "40"
    assert info.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "2 requests per minute" in (info.value.api_message or "")


def test_mistral_headers_and_429(sim, clock):
    profile = EndpointProfile(protocol="mistral", rpm=1, tpm=500)
    url = sim.add_endpoint("mistral", profile)
    body = {"model": MODEL, "messages": user(), "max_tokens": 50}
    ok = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5)

    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert ok.headers["x-ratelimit-remaining-tokens"] == str(500 - 50 - 15)
    assert ok.headers["ratelimitbysize-remaining"] == ok.headers["x-ratelimit-remaining-tokens"]
    assert ok.headers["x-ratelimitbysize-limit-minute"] == "500"
    clock.now += 30
    c = Mistral(api_key="k", server_url=url)
    with pytest.raises(errors.SDKError) as info:
        c.chat.complete(**body)
    assert info.value.status_code == 429 and info.value.headers["retry-after"] == "30"


def test_gemini_uses_openai_headers_and_array_429(sim):
    c = openai_client(sim, "gemini", EndpointProfile(protocol="gemini", rpm=1))
    assert raw_create(c).headers["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(openai.RateLimitError) as info:
        raw_create(c)
    assert info.value.body[0]["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert info.value.response.headers["retry-after"] == "60"


def test_short_window_with_the_real_clock():
    import time

    with SimulatorServer() as server:
        c = openai_client(server, "quick", EndpointProfile(rpm=2, window_s=0.3))
        raw_create(c), raw_create(c)
        with pytest.raises(openai.RateLimitError) as info:
            raw_create(c)
        assert 0 < int(info.value.response.headers["retry-after-ms"]) <= 300
        time.sleep(0.3)
        assert raw_create(c).parse().choices
