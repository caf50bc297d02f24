"""Structured-output request shapes as data: each mode sends its own shape, every answer is
validated whatever the shape, and a preset picks the shape its server accepts.

The simulator stands in for servers that accept only some shapes
(``refuse_response_formats``: llama-cpp-python's server answers every ``json_schema``
request with HTTP 500) and follows a schema written into the prompt.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from flows.nightly import nightly_batch
from pipeline import errors
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.plan import make_plan
from pipeline.policy import endpoints_from_config
from pipeline.providers import ChatRequest, EndpointSettings, build_provider
from pipeline.providers.structured import ENFORCED, MODES_OF_KIND, PROMPTED, enforcement_warnings
from pipeline.simulator import EndpointProfile
from pipeline.store import Store
from schemas import ChunkSummary, get_schema
from tests.test_providers_common import complete_once, summary_request

COMPATIBLE_MODES = sorted(MODES_OF_KIND["openai_compatible"])


def _request(mode: str) -> ChatRequest:
    return summary_request("local-model", mode)


def _complete(url: str, mode: str, preset: str = "vllm") -> Any:
    settings = EndpointSettings(
        name="local", base_url=url, api_key=SecretStr("k"), timeout_s=10, strict_validation=True
    )
    provider = build_provider("openai_compatible", settings, preset=preset)
    return complete_once(provider, _request(mode))


@pytest.mark.parametrize("mode", COMPATIBLE_MODES)
def test_every_mode_gets_an_answer_that_validates_against_the_schema(
    simulator: Any, mode: str
) -> None:
    url = simulator.add_endpoint(f"m-{mode}", EndpointProfile())
    reply = _complete(url, mode)
    assert not isinstance(reply, Exception), reply
    assert ChunkSummary.model_validate_json(reply.text).summary
    assert reply.usage.input_tokens == simulator.tokens_served(f"m-{mode}")[0]


@pytest.mark.parametrize("mode", COMPATIBLE_MODES)
def test_a_server_refusing_json_schema_fails_only_the_modes_that_send_it(
    simulator: Any, mode: str
) -> None:
    url = simulator.add_endpoint(
        f"r-{mode}", EndpointProfile(refuse_response_formats=["json_schema"])
    )
    reply = _complete(url, mode)
    if mode.startswith("json_schema"):
        assert isinstance(reply, errors.ServerError), reply
        assert reply.http_status == 500
    else:
        assert not isinstance(reply, Exception), reply
        assert ChunkSummary.model_validate_json(reply.text)


def _config(tmp: Path, sim_url: str, **model: Any) -> Path:
    corpus = tmp / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"note-{i}.txt").write_text(f"Note {i}. Acme GmbH pays EUR {i},200 by May.\n")
    data = {
        "corpus": {"path": str(corpus), "residency_default": ["on-prem"]},
        "task": {"schema": "chunk_summary", "max_output_tokens": 600},
        "budget": {"run_usd": 1},
        "routing": {"max_attempts": 2},
        "providers": [
            {
                "name": "llama-local",
                "kind": "openai_compatible",
                "preset": "llama_cpp_python",
                "base_url": sim_url,
                "region": "on-prem",
                "simulate": "always",
                "simulator": {"refuse_response_formats": ["json_schema"]},
                "models": [
                    {
                        "id": "smollm2",
                        "input_per_mtok": 0,
                        "output_per_mtok": 0,
                        "context_window": 8192,
                        **model,
                    }
                ],
            }
        ],
        "output": {"root": str(tmp / "out")},
    }
    path = tmp / "docroute.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.usefixtures("prefect_harness")
def test_the_llama_cpp_python_preset_sends_the_shape_its_server_accepts(
    tmp_path: Path, sim_env: Any
) -> None:
    config = _config(tmp_path, sim_env.url)
    (endpoint,) = endpoints_from_config(load_config(config))
    assert endpoint.structured_mode == "json_object_schema"
    summary = asyncio.run(nightly_batch(config_path=str(config)))
    assert summary["succeeded"] == summary["chunks"] == 4
    store = Store(tmp_path / "out")
    outcomes = store.read("SELECT outcome, count(*) FROM ledger GROUP BY 1").rows
    assert outcomes == [("ok", 4)]
    assert all(r.status == 200 for r in sim_env.requests("llama-local"))


@pytest.mark.usefixtures("prefect_harness")
def test_a_model_setting_overrides_the_presets_shape(tmp_path: Path, sim_env: Any) -> None:
    config = _config(tmp_path, sim_env.url, structured_mode="json_schema")
    (endpoint,) = endpoints_from_config(load_config(config))
    assert endpoint.structured_mode == "json_schema"
    summary = asyncio.run(nightly_batch(config_path=str(config)))
    assert summary["succeeded"] == 0
    errors_seen = Store(tmp_path / "out").read(
        "SELECT DISTINCT error FROM ledger WHERE http_status = 500"
    )
    assert any("'json_schema' is not supported" in str(e) for (e,) in errors_seen.rows)


def test_a_mode_the_kind_cannot_send_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = _config(tmp_path, "http://127.0.0.1:9/v1", structured_mode="tool")
    with pytest.raises(ConfigError, match=r"models\[0\]\.structured_mode: 'tool' cannot be sent"):
        load_config(path)


def test_defaults_come_from_the_preset_else_json_schema(tmp_path: Path) -> None:
    path = _config(tmp_path, "http://127.0.0.1:9/v1")
    data = yaml.safe_load(path.read_text())
    data["providers"] += [
        {**data["providers"][0], "name": "ollama-local", "preset": "ollama"},
        {**data["providers"][0], "name": "llamacpp-local", "preset": "llamacpp"},
        {**data["providers"][0], "name": "plain", "preset": None},
    ]
    path.write_text(yaml.safe_dump(data))
    modes = {e.provider: e.structured_mode for e in endpoints_from_config(load_config(path))}
    assert modes == {
        "llama-local": "json_object_schema",
        "ollama-local": "json_schema_loose",
        "llamacpp-local": "json_schema",
        "plain": "json_schema",
    }
    assert set(COMPATIBLE_MODES) >= PROMPTED


@pytest.mark.parametrize("name", ["chunk_summary", "contract_clauses"])
def test_shipped_schemas_hold_nothing_a_grammar_based_server_cannot_enforce(name: str) -> None:
    endpoints = [_Endpoint(f"e/{mode}", mode) for mode in sorted(ENFORCED)]
    assert enforcement_warnings(endpoints, get_schema(name).json_schema()) == []


def test_an_unanchored_or_escaped_pattern_and_a_prompted_mode_are_warned_of() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "pattern": r"\S"},  # the old NonBlank
            "b": {"type": "array", "items": {"type": "string", "pattern": r"^\w+$"}},
            "c": {"type": "string", "pattern": r"^[A-Z]{3}$"},  # fine: a closed alphabet
            "d": {"type": "string", "pattern": r"^[^ \t]+$"},  # admits a raw quote
            "e": {"type": "string", "pattern": r"^.+$"},  # so does any character
        },
    }
    grammar, prompted = enforcement_warnings(
        [_Endpoint("local/m", "json_object_schema"), _Endpoint("plain/m", "prompt")], schema
    )
    assert grammar.startswith("local/m: a grammar-based server may not enforce")
    assert r"'\\S' at $.a" in grammar and r"'^\\w+$' at $.b[]" in grammar
    assert "$.c" not in grammar and "at $.d" in grammar and "at $.e" in grammar
    assert prompted.startswith("plain/m: structured_mode prompt does not make the server")


@pytest.mark.usefixtures("prefect_harness")
def test_plan_and_run_say_what_an_endpoints_mode_will_not_enforce(
    tmp_path: Path, sim_env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path, sim_env.url, structured_mode="prompt")
    plan = make_plan(load_config(config))
    assert any("structured_mode prompt does not make the server" in w for w in plan.warnings)
    with caplog.at_level("WARNING"):
        summary = asyncio.run(nightly_batch(config_path=str(config)))
    assert summary["succeeded"] == 4, "a schema in the prompt is followed and validated"
    assert "schema chunk_summary: llama-local/smollm2: structured_mode prompt" in caplog.text


@dataclass(frozen=True)
class _Endpoint:
    key: str
    structured_mode: str
