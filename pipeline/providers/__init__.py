"""Provider adapters, one module per wire protocol, named in one table.

    provider = build_provider("openai", EndpointSettings(name="openai-us", ...))
    provider = build_provider("openai_compatible", settings, preset="gemini")

Adding a provider is one module, one line in ``PROVIDERS`` and one test file; adding an
OpenAI-compatible service is one row in ``PRESETS``.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.providers.anthropic import AnthropicProvider
from pipeline.providers.base import (
    ChatRequest,
    EndpointSettings,
    Provider,
    ProviderReply,
    RateLimitInfo,
)
from pipeline.providers.mistral import MistralProvider
from pipeline.providers.openai import OpenAICompatibleProvider, OpenAIProvider
from pipeline.providers.presets import PRESETS, Preset, resolve_base_url

PROVIDERS: dict[str, Callable[[EndpointSettings], Provider]] = {
    "openai": OpenAIProvider,
    "openai_compatible": OpenAICompatibleProvider,
    "anthropic": AnthropicProvider,
    "mistral": MistralProvider,
}

#: Kinds whose adapter takes a preset: a known service speaking that kind's protocol.
PRESET_KINDS: dict[str, Callable[[EndpointSettings, str], Provider]] = {
    "openai_compatible": OpenAICompatibleProvider,
}


def build_provider(kind: str, settings: EndpointSettings, preset: str | None = None) -> Provider:
    """The adapter for ``kind``; ``preset`` names an OpenAI-compatible service (``PRESETS``)."""
    try:
        factory = PROVIDERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown provider kind {kind!r}; expected one of: {', '.join(PROVIDERS)}"
        ) from None
    if preset is None:
        return factory(settings)
    with_preset = PRESET_KINDS.get(kind)
    if with_preset is None:
        raise ValueError(
            f"kind {kind!r} takes no preset; presets are for: {', '.join(PRESET_KINDS)}"
        )
    return with_preset(settings, preset)


__all__ = [
    "PRESETS",
    "PRESET_KINDS",
    "PROVIDERS",
    "AnthropicProvider",
    "ChatRequest",
    "EndpointSettings",
    "MistralProvider",
    "OpenAICompatibleProvider",
    "OpenAIProvider",
    "Preset",
    "Provider",
    "ProviderReply",
    "RateLimitInfo",
    "build_provider",
    "resolve_base_url",
]
