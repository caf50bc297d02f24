"""Known OpenAI-compatible services, as data: where they live and how they differ.

    PRESETS["groq"].base_url                  # "https://api.groq.com/openai/v1"
    resolve_base_url("gemini", None)          # the preset's URL; a configured one wins

Every quirk an adapter honours is a field here, read by ``OpenAICompatibleProvider``;
adding a service is one row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pipeline.providers.structured import StructuredMode

#: How a service shapes an error body: OpenAI's ``{"error": {…}}``, or Google's JSON
#: array of them, ``[{"error": {"code": 429, "message": …, "status": …}}]``.
ErrorShape = Literal["object", "array"]


@dataclass(frozen=True, slots=True)
class Preset:
    """One OpenAI-compatible service."""

    name: str
    base_url: str
    """Default API base URL, with its version path, as the openai SDK expects."""
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """The request field that caps the answer's tokens."""
    error_shape: ErrorShape = "object"
    """Shape of error bodies; ``array`` needs the message pulled out of a list."""
    structured_mode: StructuredMode = "json_schema"
    """How the service takes a schema (``structured.py``), unless a model's config says."""
    batch: bool = False
    """The service speaks OpenAI's Files + Batch API (``/v1/files``, ``/v1/batches``), so
    ``routing.mode: batch | auto`` may send its chunks as batch jobs; others are sync only."""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            error_shape="array",
        ),
        # Groq serves OpenAI's Files + Batch API under /openai/v1 (groq-python's "Add batch
        # API", 2025-02). Gemini's batch mode and Together's batch jobs have APIs of their own,
        # not OpenAI's, so their presets stay sync only.
        Preset("groq", "https://api.groq.com/openai/v1", "max_completion_tokens", batch=True),
        # Together and Ollama take a json_schema response format but do not honour strict.
        Preset("together", "https://api.together.xyz/v1", structured_mode="json_schema_loose"),
        Preset("xai", "https://api.x.ai/v1", "max_completion_tokens"),
        # vLLM's OpenAI server: response_format json_schema, enforced by its guided decoding
        # backend (xgrammar/outlines) whatever ``strict`` says; ``guided_json`` for old ones.
        Preset("vllm", "http://localhost:8000/v1", structured_mode="json_schema_loose"),
        Preset("ollama", "http://localhost:11434/v1", structured_mode="json_schema_loose"),
        # llama.cpp's own llama-server: json_schema, turned into a grammar.
        Preset("llamacpp", "http://127.0.0.1:8080/v1"),
        # llama-cpp-python's server: HTTP 500 for json_schema; json_object with a schema.
        Preset(
            "llama_cpp_python", "http://127.0.0.1:8000/v1", structured_mode="json_object_schema"
        ),
    )
}


#: Adapters that speak their vendor's batch API (``pipeline/providers/batch.py``).
BATCH_KINDS = frozenset({"openai", "anthropic", "mistral"})


def speaks_batch(kind: str, preset: str | None) -> bool:
    """Whether an endpoint of ``kind`` (and ``preset``) can be sent batch jobs."""
    if kind == "openai_compatible":
        found = get_preset(preset)
        return found is not None and found.batch
    return kind in BATCH_KINDS


def get_preset(name: str | None) -> Preset | None:
    """The preset called ``name`` (``None`` for none); an unknown name is a ``ValueError``."""
    if name is None:
        return None
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; expected one of: {', '.join(PRESETS)}"
        ) from None


def resolve_base_url(preset: str | Preset | None, configured: str | None) -> str | None:
    """The URL to call: the configured one if any, else the preset's default."""
    if configured:
        return configured
    found = get_preset(preset) if isinstance(preset, str) else preset
    return found.base_url if found is not None else None


def strip_version(url: str | None) -> str | None:
    """For SDKs that add ``/v1/…`` themselves: ``https://host/v1`` → ``https://host``."""
    return re.sub(r"/v1/?$", "", url) if url else url
