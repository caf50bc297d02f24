"""Provider adapters, one module per wire protocol, named in one table.

    provider = build_provider("openai", EndpointSettings(name="openai-us", ...))
    provider = build_provider("openai_compatible", settings, preset="gemini")

Adding a provider is one module, one line in ``PROVIDERS`` and one test file; adding an
OpenAI-compatible service is one row in ``PRESETS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pipeline.providers.base import (
    ChatRequest,
    EndpointSettings,
    Provider,
    ProviderReply,
    RateLimitInfo,
)
from pipeline.providers.presets import PRESETS, Preset, resolve_base_url

#: Each kind's adapter, as ``module:class`` under this package. An SDK takes up to seconds
#: to import, so an adapter's module is imported when a provider of its kind is built (and
#: ``pipeline.config``, which reads presets, stays quick to import).
PROVIDERS: dict[str, str] = {
    "openai": "openai:OpenAIProvider",
    "openai_compatible": "openai:OpenAICompatibleProvider",
    "anthropic": "anthropic:AnthropicProvider",
    "mistral": "mistral:MistralProvider",
}

#: Kinds whose adapter takes a preset: a known service speaking that kind's protocol.
PRESET_KINDS: frozenset[str] = frozenset({"openai_compatible"})

_CLASSES = {where.split(":")[1]: where for where in PROVIDERS.values()}


def adapter(kind: str) -> Callable[..., Provider]:
    """The adapter class for ``kind``."""
    try:
        where = PROVIDERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown provider kind {kind!r}; expected one of: {', '.join(PROVIDERS)}"
        ) from None
    factory: Callable[..., Provider] = _load(where)
    return factory


def build_provider(kind: str, settings: EndpointSettings, preset: str | None = None) -> Provider:
    """The adapter for ``kind``; ``preset`` names an OpenAI-compatible service (``PRESETS``)."""
    factory = adapter(kind)
    if preset is None:
        return factory(settings)
    if kind not in PRESET_KINDS:
        raise ValueError(
            f"kind {kind!r} takes no preset; presets are for: {', '.join(sorted(PRESET_KINDS))}"
        )
    return factory(settings, preset)


def _load(where: str) -> Any:
    module, name = where.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __getattr__(name: str) -> Any:
    """The adapter classes by name (``from pipeline.providers import OpenAIProvider``)."""
    if name in _CLASSES:
        return _load(_CLASSES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "adapter",
    "build_provider",
    "resolve_base_url",
]
