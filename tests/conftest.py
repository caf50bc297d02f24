"""Shared fixtures: the simulator on loopback, the sample config, a Prefect test harness."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
KEY_VARS = (
    "OPENAI_API_KEY",
    "OPENAI_EU_API_KEY",
    "LLAMA_EU_API_KEY",
    "MISTRAL_API_KEY",
    "ANTHROPIC_API_KEY",
)


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a real provider: keys from the developer's shell are hidden."""
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("DOCROUTE_SIMULATOR_URL", raising=False)
    monkeypatch.delenv("DOCROUTE_CONFIG", raising=False)


@pytest.fixture
def simulator() -> Iterator[Any]:
    from pipeline.simulator import SimulatorServer

    with SimulatorServer() as server:
        yield server


class Clock:
    """A monotonic clock that only moves when told (``SimulatorServer(clock=...)``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clocked_simulator(clock: Clock) -> Iterator[Any]:
    """A simulator whose quota windows and batch jobs run on ``clock``."""
    from pipeline.simulator import SimulatorServer

    with SimulatorServer(clock=clock) as server:
        yield server


@pytest.fixture
def sim_env(simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The pipeline attaches to this test's simulator instead of starting its own."""
    monkeypatch.setenv("DOCROUTE_SIMULATOR_URL", simulator.url)
    return simulator


def sample_config_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / "docroute.yaml").read_text())
    manifest = data["corpus"].get("residency_manifest")
    if manifest:  # the sample's own manifest, wherever a test writes the config
        data["corpus"]["residency_manifest"] = str(EXAMPLES / manifest)
    return data


def write_config(tmp_path: Path, data: dict[str, Any], corpus: Path | None = None) -> Path:
    """Write ``data`` as a config in ``tmp_path``, reading ``corpus``, writing a fresh root."""
    data = dict(data)
    data["corpus"] = dict(data["corpus"], path=str(corpus or EXAMPLES / "corpus"))
    data["output"] = {"root": str(tmp_path / "out")}
    path = tmp_path / "docroute.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def sample_corpus(tmp_path: Path) -> Path:
    """A private copy of the bundled corpus."""
    dest = tmp_path / "corpus"
    shutil.copytree(EXAMPLES / "corpus", dest)
    return dest


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
