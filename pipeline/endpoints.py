"""Connecting a run to its endpoints: real ones with keys, the simulator for the rest.

    async with connect(cfg) as conn:
        conn.providers["openai-eu"]         # a Provider adapter
        conn.simulated                       # names served by the built-in simulator

A provider with ``simulate: auto`` uses the simulator when its ``api_key_env`` variable
is unset; ``always``/``never`` force the choice. The simulator is started on 127.0.0.1
in this process, unless ``DOCROUTE_SIMULATOR_URL`` points at one already running (tests
and benchmarks), in which case the endpoint profiles are registered there.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from pipeline.config import Config
from pipeline.config_sections import ProviderConfig
from pipeline.providers import EndpointSettings, Provider, build_provider
from pipeline.providers.presets import resolve_base_url
from pipeline.secrets import read_key
from pipeline.simulator import EndpointProfile, SimulatorServer

SIMULATOR_URL_ENV = "DOCROUTE_SIMULATOR_URL"


@dataclass
class Connections:
    providers: dict[str, Provider] = field(default_factory=dict)
    simulated: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    simulator_url: str | None = None

    def notice(self) -> str | None:
        """The one line that tells the user which endpoints are simulated, and why."""
        if not self.simulated:
            return None
        why = (
            f"no API key set ({', '.join(self.missing_keys)})" if self.missing_keys else "simulate"
        )
        return (
            f"{why}: using the built-in provider simulator at {self.simulator_url} for "
            f"{', '.join(self.simulated)}"
        )


def wants_simulator(p: ProviderConfig, force: bool) -> bool:
    if force or p.simulate == "always":
        return True
    if p.simulate == "never":
        return False
    return p.api_key_env is not None and read_key(p.api_key_env) is None


#: The wire a simulated endpoint speaks, by provider kind (and preset).
_PROTOCOL_OF_KIND = {
    "openai": "openai",
    "openai_compatible": "openai",
    "anthropic": "anthropic",
    "mistral": "mistral",
}
_PROTOCOL_OF_PRESET = {"gemini": "gemini"}


def profile_of(p: ProviderConfig) -> EndpointProfile:
    """The simulator profile standing in for ``p``, speaking ``p``'s wire protocol."""
    protocol = _PROTOCOL_OF_PRESET.get(p.preset or "", _PROTOCOL_OF_KIND[p.kind])
    return p.simulator.model_copy(update={"protocol": protocol})


@asynccontextmanager
async def connect(cfg: Config, *, simulate: bool = False) -> AsyncIterator[Connections]:
    """Adapters for every provider of ``cfg``; closes them (and a simulator it started) after."""
    conn = Connections()
    sim_names = [p for p in cfg.providers if wants_simulator(p, simulate)]
    server: SimulatorServer | None = None
    base_urls: dict[str, str] = {}
    if sim_names:
        external = os.environ.get(SIMULATOR_URL_ENV)
        if external:
            conn.simulator_url = external.rstrip("/")
            for p in sim_names:
                base_urls[p.name] = _register_remote(conn.simulator_url, p)
        else:
            server = SimulatorServer().start()
            conn.simulator_url = server.url
            for p in sim_names:
                base_urls[p.name] = server.add_endpoint(p.name, profile_of(p))
    try:
        for p in cfg.providers:
            conn.providers[p.name] = _adapter(cfg, p, base_urls.get(p.name))
            if p.name in base_urls:
                conn.simulated.append(p.name)
                if p.api_key_env and not simulate and p.simulate == "auto":
                    conn.missing_keys.append(p.api_key_env)
        yield conn
    finally:
        for provider in conn.providers.values():
            await provider.aclose()
        if server is not None:
            server.stop()


def _adapter(cfg: Config, p: ProviderConfig, simulator_base: str | None) -> Provider:
    settings = EndpointSettings(
        name=p.name,
        base_url=simulator_base or resolve_base_url(p.preset, p.base_url),
        api_key=None if simulator_base else read_key(p.api_key_env),
        timeout_s=cfg.routing.request_timeout_s,
        strict_validation=simulator_base is not None,
    )
    return build_provider(p.kind, settings, preset=p.preset)


def _register_remote(url: str, p: ProviderConfig) -> str:
    """Register ``p``'s profile on a simulator running elsewhere; its base URL for the SDK."""
    body = json.dumps(profile_of(p).model_dump(mode="json")).encode()
    req = urllib.request.Request(
        f"{url}/_sim/endpoints/{p.name}",
        data=body,
        method="PUT",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # loopback only
        return str(json.loads(resp.read())["base_url"])
