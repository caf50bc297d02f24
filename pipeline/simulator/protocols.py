"""The wire protocols the simulator speaks, by ``EndpointProfile.protocol``, and their URLs.

Adding a protocol is one ``wire_*.py`` module implementing ``wire.Wire`` and one line here.
The base URL is what each official SDK wants for an endpoint:

    >>> base_url("http://127.0.0.1:8000", "eu", "openai")      # openai.OpenAI(base_url=…)
    'http://127.0.0.1:8000/eu/v1'
    >>> base_url("http://127.0.0.1:8000", "eu", "anthropic")   # Anthropic(base_url=…)
    'http://127.0.0.1:8000/eu'
    >>> base_url("http://127.0.0.1:8000", "eu", "mistral")     # Mistral(server_url=…)
    'http://127.0.0.1:8000/eu'
"""

from __future__ import annotations

from pipeline.sim_profiles import ProtocolName

from .wire import Wire
from .wire_anthropic import AnthropicWire
from .wire_gemini import GeminiWire
from .wire_mistral import MistralWire
from .wire_openai import OpenAIWire

WIRES: dict[ProtocolName, Wire] = {
    "openai": OpenAIWire(),
    "gemini": GeminiWire(),
    "anthropic": AnthropicWire(),
    "mistral": MistralWire(),
}

#: Every route suffix under ``/{endpoint}`` that some protocol serves.
PATHS = frozenset(wire.path for wire in WIRES.values())


def base_url(server_url: str, name: str, protocol: ProtocolName) -> str:
    """The base URL to give ``protocol``'s SDK for endpoint ``name`` of the server."""
    return f"{server_url.rstrip('/')}/{name}{WIRES[protocol].base_path}"
