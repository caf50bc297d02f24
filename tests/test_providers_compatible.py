"""``openai_compatible`` with presets: base URLs and quirks as data. Gemini's JSON-array
error bodies become the right error type with Google's own message; each fault through a
Gemini endpoint ends in the right outcome and next step."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline import errors
from pipeline.providers import (
    PRESETS,
    ChatRequest,
    EndpointSettings,
    OpenAICompatibleProvider,
    OpenAIProvider,
    ProviderReply,
    build_provider,
    resolve_base_url,
)
from pipeline.simulator import EndpointProfile
from schemas import get_schema
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


def _settings(url: str | None, key: str = "AIza-test-key") -> EndpointSettings:
    return EndpointSettings(
        name="gem", base_url=url, api_key=SecretStr(key), timeout_s=10, strict_validation=True
    )


def _request() -> ChatRequest:
    return summary_request("gemini-test")


def _complete(url: str, preset: str | None = "gemini") -> Any:
    provider = build_provider("openai_compatible", _settings(url), preset=preset)

    async def go() -> Any:
        try:
            return await provider.complete(_request())
        except errors.ProviderError as exc:
            return exc
        finally:
            await provider.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("fault", list(FAULTS))
def test_gemini_fault_ends_in_its_outcome_and_next_step(simulator: Any, fault: str) -> None:
    h, result, ledger = run_fault(
        simulator, "openai_compatible", fault, protocol="gemini", preset="gemini"
    )
    check_fault(h, result, ledger, fault, STATUS[fault])


def test_a_gemini_endpoint_that_keeps_failing_fails_the_chunk(simulator: Any) -> None:
    check_fail(simulator, "openai_compatible", "gemini", preset="gemini")


def test_gemini_success_bills_exactly_what_was_served(simulator: Any) -> None:
    spec = Spec("gem-a", "openai_compatible", EndpointProfile(protocol="gemini"), preset="gemini")
    check_success(Harness(simulator, [spec]), "gem-a")


@pytest.mark.parametrize(
    ("fault", "kind", "words"),
    [
        ("rate_limited", errors.RateLimited, "You exceeded your current quota"),
        ("overloaded", errors.Overloaded, "The model is overloaded"),
        ("auth", errors.AuthError, "API key not valid"),
        ("bad_request", errors.BadRequest, "scripted to refuse"),
    ],
)
def test_gemini_array_error_bodies_give_the_type_and_a_readable_message(
    simulator: Any, fault: str, kind: type, words: str
) -> None:
    url = simulator.add_endpoint(
        "gem",
        EndpointProfile(protocol="gemini", script=[fault], retry_after_s=5),  # type: ignore[list-item]
    )
    exc = _complete(url)
    assert type(exc) is kind
    assert words in exc.message and "Error code" not in exc.message
    assert exc.message.endswith(")"), "Google's status is kept: '… (RESOURCE_EXHAUSTED)'"
    if kind is errors.RateLimited:
        assert exc.retry_after == 5.0


def test_without_the_preset_the_array_body_still_gives_the_servers_words(simulator: Any) -> None:
    url = simulator.add_endpoint("gem", EndpointProfile(protocol="gemini", script=["auth"]))
    exc = _complete(url, preset=None)
    assert type(exc) is errors.AuthError, "the status alone still gives the type"
    assert "API key not valid" in exc.message, "every ledger error keeps the server's words"
    assert not exc.message.endswith(")"), "Google's status is what the preset's reader adds"


@pytest.mark.parametrize("preset", ["groq", "together", "xai", "vllm", "ollama"])
def test_other_presets_talk_to_an_openai_wire(simulator: Any, preset: str) -> None:
    url = simulator.add_endpoint("gem", EndpointProfile(protocol="openai"))
    reply = _complete(url, preset=preset)
    assert isinstance(reply, ProviderReply) and reply.finish_reason == "stop"
    get_schema("chunk_summary").model.model_validate_json(reply.text or "")
    assert reply.usage.input_tokens == simulator.tokens_served("gem")[0]


def test_presets_resolve_base_urls() -> None:
    assert resolve_base_url("gemini", None) == (
        "https://generativelanguage.googleapis.com/v1beta/openai/"
    )
    assert resolve_base_url("groq", None) == "https://api.groq.com/openai/v1"
    assert resolve_base_url("together", None) == "https://api.together.xyz/v1"
    assert resolve_base_url("xai", None) == "https://api.x.ai/v1"
    assert resolve_base_url("vllm", None) == "http://localhost:8000/v1"
    assert resolve_base_url("ollama", None) == "http://localhost:11434/v1"
    assert resolve_base_url("vllm", "http://gpu-box:8000/v1") == "http://gpu-box:8000/v1"
    assert resolve_base_url(None, None) is None
    with pytest.raises(ValueError, match="unknown preset 'palm'"):
        resolve_base_url("palm", None)


def test_build_provider_applies_a_preset() -> None:
    groq = build_provider("openai_compatible", _settings(None), preset="groq")
    assert isinstance(groq, OpenAICompatibleProvider)
    assert str(groq._client.base_url) == "https://api.groq.com/openai/v1/"
    assert groq.max_tokens_param == PRESETS["groq"].max_tokens_param == "max_completion_tokens"
    gemini = build_provider("openai_compatible", _settings(None), preset="gemini")
    assert gemini.error_shape == "array" and gemini.max_tokens_param == "max_tokens"
    own = build_provider("openai_compatible", _settings("http://gpu-box:8000/v1"), preset="vllm")
    assert str(own._client.base_url) == "http://gpu-box:8000/v1/", "a configured URL wins"


def test_build_provider_keeps_the_two_argument_call_and_refuses_misuse() -> None:
    plain = build_provider("openai", _settings("http://127.0.0.1:1/v1"))
    assert type(plain) is OpenAIProvider
    compatible = build_provider("openai_compatible", _settings("http://127.0.0.1:1/v1"))
    assert compatible.max_tokens_param == "max_tokens" and compatible.error_shape == "object"
    with pytest.raises(ValueError, match="takes no preset"):
        build_provider("anthropic", _settings(None), preset="gemini")
    with pytest.raises(ValueError, match="unknown preset"):
        build_provider("openai_compatible", _settings(None), preset="palm")
    with pytest.raises(ValueError, match="unknown provider kind"):
        build_provider("cohere", _settings(None))
