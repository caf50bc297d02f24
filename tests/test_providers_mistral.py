"""The Mistral adapter: the real ``mistralai`` SDK against the simulator's Mistral wire,
driven through the dispatcher (each fault's ledger outcome and next step); transport
failures that the SDK lets through as ``httpx2`` exceptions; quota headers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline import errors
from pipeline.providers import ChatRequest, EndpointSettings, ProviderReply, build_provider
from pipeline.providers.headers import mistral_limits
from pipeline.simulator import EndpointProfile
from tests.test_providers_common import (
    FAULTS,
    STATUS,
    Harness,
    Spec,
    check_fail,
    check_fault,
    check_success,
    run_fault,
    summary_request,
)


def _request() -> ChatRequest:
    return summary_request("mistral-test")


def _complete(url: str, key: str | None = "sk-test-key-000", timeout_s: float = 10) -> Any:
    """One call through a fresh adapter: the ProviderReply, or the ProviderError raised."""
    provider = build_provider(
        "mistral",
        EndpointSettings(
            name="mistral",
            base_url=url,
            api_key=SecretStr(key) if key else None,
            timeout_s=timeout_s,
            strict_validation=True,
        ),
    )

    async def go() -> Any:
        try:
            return await provider.complete(_request())
        except errors.ProviderError as exc:
            return exc
        finally:
            await provider.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_ends_in_its_outcome_and_next_step(simulator: Any, fault: str) -> None:
    h, result, ledger = run_fault(simulator, "mistral", fault, protocol="mistral")
    check_fault(h, result, ledger, fault, STATUS[fault])


def test_an_endpoint_that_keeps_failing_fails_the_chunk(simulator: Any) -> None:
    check_fail(simulator, "mistral", "mistral")


def test_success_bills_exactly_what_was_served(simulator: Any) -> None:
    spec = Spec("mistral-a", "mistral", EndpointProfile(protocol="mistral"))
    entry = check_success(Harness(simulator, [spec]), "mistral-a")
    assert entry.cost_usd == pytest.approx(
        (entry.input_tokens * 1.0 + entry.output_tokens * 4.0) / 1e6
    )


def test_errors_carry_status_retry_after_request_id_and_the_api_message(simulator: Any) -> None:
    url = simulator.add_endpoint(
        "mistral", EndpointProfile(protocol="mistral", script=["rate_limited"], retry_after_s=4)
    )
    exc = _complete(url)
    assert isinstance(exc, errors.RateLimited)
    assert (exc.http_status, exc.retry_after) == (429, 4.0)
    assert exc.message == "Requests rate limit exceeded", "the body's message, not the SDK's"
    assert exc.request_id and exc.provider == "mistral" and exc.model == "mistral-test"
    assert isinstance(exc.__cause__, Exception), "raised from the SDK's exception"


def test_a_timeout_is_a_timeout_not_a_dropped_connection(simulator: Any) -> None:
    url = simulator.add_endpoint(
        "mistral", EndpointProfile(protocol="mistral", script=["timeout"], hang_s=3)
    )
    exc = _complete(url, timeout_s=0.3)
    assert type(exc) is errors.Timeout and exc.http_status is None


def test_a_refused_connection_is_a_dropped_connection() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exc = _complete(f"http://127.0.0.1:{port}")
    assert type(exc) is errors.ConnectionDropped and exc.http_status is None


def test_quota_headers_become_rate_limit_info(simulator: Any) -> None:
    url = simulator.add_endpoint("mistral", EndpointProfile(protocol="mistral", rpm=20, tpm=9_000))
    reply = _complete(url)
    assert isinstance(reply, ProviderReply)
    limits = reply.limits
    assert (limits.limit_requests, limits.remaining_requests) == (20, 19)
    assert limits.limit_tokens == 9_000 and limits.remaining_tokens < 9_000
    assert reply.request_id and reply.model_reported == "mistral-test"


def test_token_quota_headers_alone_are_read() -> None:
    info = mistral_limits(
        {"ratelimitbysize-limit": "500000", "ratelimitbysize-remaining": "499000",
         "ratelimitbysize-reset": "12"}
    )  # fmt: skip
    assert info is not None
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens_s) == (500000, 499000, 12)
    assert info.limit_requests is None
    minute = mistral_limits({"x-ratelimitbysize-remaining-minute": "7"})
    assert minute is not None and minute.remaining_tokens == 7
    assert mistral_limits({}) is None


def test_a_rejected_key_is_scrubbed_from_the_message(simulator: Any) -> None:
    profile = EndpointProfile(
        protocol="mistral", api_key="sk-right-key-123456", echo_key_in_errors=True
    )
    url = simulator.add_endpoint("mistral", profile)
    exc = _complete(url, key="sk-wrong-key-654321")
    assert isinstance(exc, errors.AuthError) and exc.http_status == 401
    assert "wrong-key" not in exc.message and "[redacted]" in exc.message


def test_a_keyless_endpoint_never_sends_a_key_from_the_environment(
    simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", "from-the-environment")
    profile = EndpointProfile(protocol="mistral", api_key="other", echo_key_in_errors=True)
    url = simulator.add_endpoint("mistral", profile)
    exc = _complete(url, key=None)
    assert isinstance(exc, errors.AuthError)
    assert "no-key" in exc.message and "from-the-environment" not in exc.message


def test_concurrent_calls_each_get_their_own_response_headers(simulator: Any) -> None:
    url = simulator.add_endpoint("mistral", EndpointProfile(protocol="mistral", rpm=100))
    provider = build_provider(
        "mistral",
        EndpointSettings(
            name="mistral",
            base_url=url,
            api_key=SecretStr("sk-test-key-000"),
            timeout_s=10,
            strict_validation=True,
        ),
    )

    async def go() -> list[ProviderReply]:
        try:
            return await asyncio.gather(*(provider.complete(_request()) for _ in range(20)))
        finally:
            await provider.aclose()

    replies = asyncio.run(go())
    remaining = sorted(r.limits.remaining_requests for r in replies if r.limits)
    assert remaining == list(range(80, 100)), "one response's headers per call, none shared"
    assert len({r.request_id for r in replies}) == 20
