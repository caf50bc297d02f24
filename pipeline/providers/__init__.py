"""Provider adapters, one module per wire protocol, named in one table.

    provider = build_provider("openai", EndpointSettings(name="openai-us", ...))

Adding a provider is one module, one line in ``PROVIDERS`` and one test file.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.providers.base import ChatRequest, EndpointSettings, Provider, ProviderReply
from pipeline.providers.openai import OpenAICompatibleProvider, OpenAIProvider

PROVIDERS: dict[str, Callable[[EndpointSettings], Provider]] = {
    "openai": OpenAIProvider,
    "openai_compatible": OpenAICompatibleProvider,
}


def build_provider(kind: str, settings: EndpointSettings) -> Provider:
    try:
        factory = PROVIDERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown provider kind {kind!r}; expected one of: {', '.join(PROVIDERS)}"
        ) from None
    return factory(settings)


__all__ = [
    "PROVIDERS",
    "ChatRequest",
    "EndpointSettings",
    "Provider",
    "ProviderReply",
    "build_provider",
]
