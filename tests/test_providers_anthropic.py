"""The Anthropic adapter: the real ``anthropic`` SDK against the simulator's Messages wire,
driven through the dispatcher (each fault's ledger outcome and next step), in both
structured-output modes; usage normalisation and cache-write pricing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Usage as AnthropicUsage
from pydantic import SecretStr

from pipeline import errors
from pipeline.prices import Price
from pipeline.providers import ChatRequest, EndpointSettings, ProviderReply, build_provider
from pipeline.providers.anthropic import normalise_usage
from pipeline.simulator import EndpointProfile
from schemas import get_schema
from tests.test_providers_common import (
    FAULTS,
    Harness,
    Spec,
    check_fail,
    check_fault,
    check_success,
    complete_once,
    run_fault,
    summary_request,
)
from tests.test_providers_common import (
    STATUS as COMMON_STATUS,
)

STATUS = COMMON_STATUS | {"overloaded": 529}  # Anthropic's overload status
MODES = ["json_schema", "tool"]


def _request(mode: str = "json_schema") -> ChatRequest:
    return summary_request("claude-test", mode)


def _complete(url: str, request: ChatRequest, key: str | None = "sk-test-key-000") -> Any:
    """One call through a fresh adapter: the ProviderReply, or the ProviderError raised."""
    provider = build_provider(
        "anthropic",
        EndpointSettings(
            name="claude",
            base_url=url,
            api_key=SecretStr(key) if key else None,
            timeout_s=10,
            strict_validation=True,
        ),
    )
    return complete_once(provider, request)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_ends_in_its_outcome_and_next_step(simulator: Any, fault: str, mode: str) -> None:
    h, result, ledger = run_fault(
        simulator, "anthropic", fault, protocol="anthropic", structured_mode=mode
    )
    check_fault(h, result, ledger, fault, STATUS[fault])


def test_an_endpoint_that_keeps_failing_fails_the_chunk(simulator: Any) -> None:
    check_fail(simulator, "anthropic", "anthropic")


@pytest.mark.parametrize("mode", MODES)
def test_success_bills_exactly_what_was_served(simulator: Any, mode: str) -> None:
    profile = EndpointProfile(protocol="anthropic")
    spec = Spec("claude-a", "anthropic", profile, structured_mode=mode)
    entry = check_success(Harness(simulator, [spec]), "claude-a")
    assert entry.request_id.startswith("req_"), "the request-id header, not the message id"
    assert entry.cost_usd == pytest.approx(
        (entry.input_tokens * 1.0 + entry.output_tokens * 4.0) / 1e6
    )


def test_forced_tool_mode_answers_with_the_tool_input(simulator: Any) -> None:
    url = simulator.add_endpoint("claude", EndpointProfile(protocol="anthropic"))
    reply = _complete(url, _request("tool"))
    assert isinstance(reply, ProviderReply)
    assert reply.finish_reason == "tool_use", "the answer came as a tool_use block"
    value = get_schema("chunk_summary").model.model_validate_json(reply.text or "")
    assert json.loads(reply.text or "") == value.model_dump(mode="json", exclude_unset=True)


def test_json_schema_mode_answers_with_text(simulator: Any) -> None:
    url = simulator.add_endpoint("claude", EndpointProfile(protocol="anthropic"))
    reply = _complete(url, _request("json_schema"))
    assert isinstance(reply, ProviderReply)
    assert reply.finish_reason == "end_turn" and reply.refusal is None
    get_schema("chunk_summary").model.model_validate_json(reply.text or "")


def test_refusal_and_max_tokens_are_mapped(simulator: Any) -> None:
    url = simulator.add_endpoint(
        "claude", EndpointProfile(protocol="anthropic", script=["refusal", "truncated"])
    )
    refused = _complete(url, _request())
    assert refused.refusal and "can't help" in refused.refusal
    cut = _complete(url, _request())
    assert cut.finish_reason == "length" and cut.refusal is None


def test_quota_headers_become_rate_limit_info(simulator: Any) -> None:
    profile = EndpointProfile(protocol="anthropic", rpm=50, tpm=40_000)
    url = simulator.add_endpoint("claude", profile)
    reply = _complete(url, _request())
    limits = reply.limits
    assert (limits.limit_requests, limits.remaining_requests) == (50, 49)
    assert limits.limit_tokens == 40_000 and limits.remaining_tokens < 40_000
    assert 0 < limits.reset_requests_s <= 61 and 0 < limits.reset_tokens_s <= 61


def test_quota_429_carries_retry_after_and_limits(simulator: Any) -> None:
    url = simulator.add_endpoint("claude", EndpointProfile(protocol="anthropic", rpm=1))
    assert isinstance(_complete(url, _request()), ProviderReply)
    exc = _complete(url, _request())
    assert isinstance(exc, errors.RateLimited) and exc.http_status == 429
    assert exc.retry_after is not None and 0 < exc.retry_after <= 61
    assert exc.limits is not None and exc.limits.remaining_requests == 0
    assert exc.request_id and exc.provider == "claude" and exc.model == "claude-test"
    assert "rate limit" in exc.message and "Error code" not in exc.message


def test_usage_is_normalised_to_the_whole_prompt_and_priced_with_cache_writes() -> None:
    usage = normalise_usage(
        AnthropicUsage(
            input_tokens=100,
            cache_read_input_tokens=1_000,
            cache_creation_input_tokens=500,
            output_tokens=50,
        )
    )
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        1_600,
        1_000,
        500,
    )
    assert usage.output_tokens == 50
    price = Price(3.0, 15.0, 0.3, 200_000, 8192, "t", cache_write_per_mtok=3.75)
    expected = (100 * 3.0 + 1_000 * 0.3 + 500 * 3.75 + 50 * 15.0) / 1e6
    assert price.cost_usd(usage) == pytest.approx(expected)
    plain = normalise_usage(AnthropicUsage(input_tokens=7, output_tokens=3))
    assert (plain.input_tokens, plain.cached_input_tokens, plain.cache_write_tokens) == (7, 0, 0)


# Fake keys in Anthropic's shape, assembled here so no key-looking literal is tracked.
FAKE_PREFIX = "sk-" + "ant-"


def test_a_rejected_key_is_scrubbed_from_the_message(simulator: Any) -> None:
    """The wrong key is never registered: the pattern alone must catch it."""
    right, wrong = FAKE_PREFIX + "right-key-123456", FAKE_PREFIX + "wrong-key-654321"
    profile = EndpointProfile(protocol="anthropic", api_key=right, echo_key_in_errors=True)
    url = simulator.add_endpoint("claude", profile)
    exc = _complete(url, _request(), key=wrong)
    assert isinstance(exc, errors.AuthError) and exc.http_status == 401
    assert "wrong-key" not in exc.message and "[redacted]" in exc.message
    assert isinstance(_complete(url, _request(), key=right), ProviderReply)


def test_a_keyless_endpoint_never_sends_a_key_from_the_environment(
    simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-the-environment")
    profile = EndpointProfile(protocol="anthropic", api_key="sk-ant-other", echo_key_in_errors=True)
    url = simulator.add_endpoint("claude", profile)
    exc = _complete(url, _request(), key=None)
    assert isinstance(exc, errors.AuthError)
    assert "no-key" in exc.message and "from-the-environment" not in exc.message


def test_a_base_url_with_v1_works_too(simulator: Any) -> None:
    url = simulator.add_endpoint("claude", EndpointProfile(protocol="anthropic"))
    reply = _complete(url + "/v1", _request())
    assert isinstance(reply, ProviderReply) and reply.text
