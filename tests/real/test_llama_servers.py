"""docroute against real OpenAI-compatible servers: llama.cpp's ``llama-server`` and
llama-cpp-python's server, each running SmolLM2-135M-Instruct on 127.0.0.1.

A small corpus runs end to end through the nightly Prefect flow with the server's preset.
Every chunk ends succeeded or failed with a reason that says what happened; every call's
ledger tokens equal the ``usage`` the server answered with (read off the wire by a
recording proxy between docroute and the server); a wrong key and a stopped server give
their own reasons, quickly. Run with ``make test-real`` (``pytest -m real tests/real``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.nightly import nightly_batch
from pipeline.store import Store
from tests.real.conftest import (
    FIGURES,
    Exchange,
    RecordingProxy,
    ServerProcess,
    free_port,
    start_llama_server,
)

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("prefect_harness")]

DOCS = {
    "hosting_amendment.txt": (
        "Amendment No. 2 to the hosting agreement between Vantrel Systems B.V. and Nordhaven "
        "Logistics GmbH. The term is extended until 31 December 2027. From 1 March 2025 the "
        "monthly fee is EUR 12,500. Personal data stays in data centres in Frankfurt and "
        "Amsterdam."
    ),
    "invoice_policy.txt": (
        "Invoice policy of Lumen Logistik AG. Suppliers send invoices in EUR to the accounts "
        "payable team in Hamburg. Invoices are paid within 30 days of receipt. Late invoices "
        "are paid in the next payment run."
    ),
    "incident_report.txt": (
        "Incident report 2024-10-07. The warehouse scanner service in Rotterdam was down for "
        "three hours after a failed update. No data was lost. The vendor, Scanwise B.V., "
        "rolled the update back and will test updates on a staging system first."
    ),
    "travel_rules.txt": (
        "Travel rules for staff of Nordhaven Logistics GmbH. Trains are booked in second "
        "class for trips under six hours. Hotels may cost up to EUR 150 a night in Berlin "
        "and Munich. Receipts are filed within two weeks."
    ),
    "dpa_clause.txt": (
        "Data processing clause. The processor, Vantrel Systems B.V., processes customer "
        "records only on written instructions. It deletes the records 30 days after the "
        "contract ends and reports any breach within 48 hours, as the GDPR requires."
    ),
    "board_minutes.txt": (
        "Minutes of the board meeting of 12 June 2024 in Amsterdam. The board approved a "
        "budget of EUR 2 million for the new sorting centre in Venlo. Anna de Vries will "
        "lead the project. Construction starts in spring 2025."
    ),
}
#: Reasons a chunk may honestly fail for against a working server with the right preset:
#: the small model's answer did not validate, or was cut off at the output cap. (Also
#: ``server_error`` with the server's own message: llama-server answers HTTP 500 "The model
#: produced output that does not match the expected peg-native format" when a schema-bound
#: answer is cut off at max_tokens.)
CONTENT_REASONS = {"invalid_output", "output_truncated"}
QUICK_S = 20.0


def _corpus(tmp_path: Path) -> Path:
    eu = tmp_path / "corpus" / "eu"
    eu.mkdir(parents=True)
    for name, text in DOCS.items():
        (eu / name).write_text(text + "\n", encoding="utf-8")
    return tmp_path / "corpus"


def _config(
    tmp_path: Path,
    *,
    name: str,
    preset: str,
    base_url: str,
    model: str,
    api_key_env: str | None = None,
) -> Path:
    data: dict[str, Any] = {
        "corpus": {
            "path": str(_corpus(tmp_path)),
            "include": ["**/*.txt"],
            "residency": [{"match": "eu/**", "regions": ["eu"]}],
            "residency_default": "deny",
        },
        "task": {"schema": "chunk_summary", "max_output_tokens": 300},
        "chunking": {"max_tokens": 400, "overlap_tokens": 0},
        "budget": {"run_usd": 1.0},
        "routing": {
            "strategy": "cheapest",
            "max_attempts": 3,
            "repair_attempts": 1,
            "retries_per_endpoint": 1,
            "backoff_initial_s": 0.2,
            "request_timeout_s": 300,  # a 135M model on 2 busy cores
            "concurrency": 2,  # the server's two slots (-np 2)
        },
        "providers": [
            {
                "name": name,
                "kind": "openai_compatible",
                "preset": preset,
                "region": "eu",
                "base_url": base_url,
                "api_key_env": api_key_env,
                "simulate": "never",
                "models": [
                    {
                        "id": model,
                        "input_per_mtok": 0.02,
                        "output_per_mtok": 0.04,
                        "context_window": 2048,  # one slot of -c 4096 -np 2
                        "max_output_tokens": 1024,
                    }
                ],
            }
        ],
        "output": {"root": str(tmp_path / "out")},
    }
    path = tmp_path / "docroute.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(config: Path) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    summary = asyncio.run(nightly_batch(config_path=str(config)))
    return summary, time.monotonic() - started


def _rows(store: Store, sql: str, run_id: str) -> list[dict[str, Any]]:
    return list(store.read(sql, [run_id]).to_dicts())


def _failed_run(
    tmp: Path, summary: dict[str, Any], label: str, wall: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The results and calls of a run meant to fail, its figures printed at the end."""
    store = Store(tmp / "out")
    results, calls = _results(store, summary["run_id"]), _calls(store, summary["run_id"])
    FIGURES.append(
        {
            "server": label,
            "wall_s": round(wall, 1),
            "reasons": dict(Counter(r["reason"] for r in results)),
            "ledger_errors": sorted({str(c["error"]) for c in calls}),
        }
    )
    return results, calls


def _results(store: Store, run_id: str) -> list[dict[str, Any]]:
    sql = "SELECT chunk_id, status, reason, attempts, error FROM results WHERE run_id = ?"
    return _rows(store, sql, run_id)


def _calls(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Ledger rows of attempts that went to an endpoint (not refusals to call)."""
    return _rows(
        store,
        "SELECT chunk_id, attempt, outcome, http_status, input_tokens, output_tokens, "
        "cached_input_tokens, request_id, model_reported, error FROM ledger "
        "WHERE run_id = ? AND provider IS NOT NULL ORDER BY chunk_id, attempt",
        run_id,
    )


def _server_usage(x: Exchange) -> tuple[int, int, int]:
    usage = x.usage or {}
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )


def _conformance(
    server: ServerProcess, tmp_path: Path, *, preset: str, label: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], list[Exchange]]:
    """Run the corpus through a recording proxy in front of ``server``; record the figures."""
    model = server.model_id()
    with RecordingProxy(server.url) as proxy:
        config = _config(
            tmp_path, name=label, preset=preset, base_url=f"{proxy.url}/v1", model=model
        )
        summary, wall = _run(config)
        wire = proxy.exchanges()
    store = Store(tmp_path / "out")
    results, calls = _results(store, summary["run_id"]), _calls(store, summary["run_id"])
    answered = {x.request_id: x for x in wire if x.status == 200}
    matches = [
        (c["input_tokens"], c["output_tokens"], c["cached_input_tokens"])
        == _server_usage(answered[c["request_id"]])
        for c in calls
        if c["request_id"] in answered
    ]
    FIGURES.append(
        {
            "server": label,
            "preset": preset,
            "model": model,
            "chunks": len(results),
            "succeeded": sum(r["status"] == "succeeded" for r in results),
            "failed_by_reason": dict(
                Counter(r["reason"] for r in results if r["status"] != "succeeded")
            ),
            "wall_s": round(wall, 1),
            "attempts": len(calls),
            "outcomes": dict(Counter(c["outcome"] for c in calls)),
            "http_statuses": dict(Counter(x.status for x in wire)),
            "ledger_tokens_equal_server_usage": f"{sum(matches)} of {len(calls)} calls",
            "server_usage_sum": [sum(_server_usage(x)[i] for x in wire) for i in (0, 1)],
            "ledger_tokens_sum": [
                sum(c["input_tokens"] for c in calls),
                sum(c["output_tokens"] for c in calls),
            ],
        }
    )
    return summary, results, calls, wire


def _server_message(x: Exchange) -> str | None:
    error = x.response.get("error") if isinstance(x.response, dict) else None
    return str(error.get("message")) if isinstance(error, dict) else None


def _check_conformance(
    summary: dict[str, Any],
    results: list[dict[str, Any]],
    calls: list[dict[str, Any]],
    wire: list[Exchange],
    format_type: str,
) -> None:
    # The server took the preset's request shape: it answered it, and refused none (4xx).
    assert any(x.status == 200 for x in wire), Counter(x.status for x in wire)
    assert not [x.status for x in wire if 400 <= x.status < 500], [_server_message(x) for x in wire]
    for x in wire:
        assert x.request["response_format"]["type"] == format_type, x.request["response_format"]
        if format_type == "json_object":
            assert x.request["response_format"]["schema"]["properties"], x.request

    # One result per chunk, each succeeded or failed for what the model or server did,
    # in words the server said (a 5xx keeps the server's message).
    server_said = {m for x in wire if x.status >= 500 and (m := _server_message(x))}
    assert len(results) == summary["chunks"] == len(DOCS)
    assert len({r["chunk_id"] for r in results}) == len(results)
    for r in results:
        if r["status"] == "succeeded":
            continue
        assert r["status"] == "failed" and r["attempts"] >= 1 and r["error"], r
        assert r["reason"] in CONTENT_REASONS | {"server_error", "endpoint_disabled"}, r
        if r["reason"] in ("server_error", "endpoint_disabled"):
            assert any(m in r["error"] for m in server_said), (r, server_said)
    assert any(r["status"] == "succeeded" for r in results), results

    # Every answer the server gave is one ledger row with the server's own usage; a call the
    # client gave up on (``uncertain``) is booked at its worst case, never below the truth.
    answered = {x.request_id: x for x in wire if x.status == 200}
    assert len(answered) == sum(x.status == 200 for x in wire), "request ids must be unique"
    seen = [c for c in calls if c["request_id"] in answered]
    for c in seen:
        ledger = (c["input_tokens"], c["output_tokens"], c["cached_input_tokens"])
        assert ledger == _server_usage(answered[c["request_id"]]), (
            c,
            answered[c["request_id"]].usage,
        )
        assert ledger[0] > 0 and ledger[1] > 0, c
    assert len({c["request_id"] for c in seen}) == len(seen)
    late = [x for rid, x in answered.items() if rid not in {c["request_id"] for c in seen}]
    unsure = [c for c in calls if c["outcome"] == "uncertain"]
    assert len(late) <= len(unsure), "an answer the client read is missing from the ledger"
    for i in (0, 1):
        key = ("input_tokens", "output_tokens")[i]
        assert sum(c[key] for c in unsure) >= sum(_server_usage(x)[i] for x in late)
    for c in calls:
        if c["request_id"] not in answered and c["outcome"] != "uncertain":
            assert (c["input_tokens"], c["output_tokens"]) == (0, 0), c
    # What the ledger says the model was: what the server said, invalid answers included.
    for c in seen:
        assert c["model_reported"] == answered[c["request_id"]].response["model"], c


def test_llama_server_with_the_llamacpp_preset(llama_server: ServerProcess, tmp_path: Path) -> None:
    summary, results, calls, wire = _conformance(
        llama_server, tmp_path, preset="llamacpp", label="llama-server"
    )
    _check_conformance(summary, results, calls, wire, format_type="json_schema")


def test_llama_cpp_python_with_its_preset(
    llama_cpp_python_server: ServerProcess, tmp_path: Path
) -> None:
    summary, results, calls, wire = _conformance(
        llama_cpp_python_server, tmp_path, preset="llama_cpp_python", label="llama-cpp-python"
    )
    _check_conformance(summary, results, calls, wire, format_type="json_object")


def test_a_wrong_key_is_an_auth_failure_of_the_endpoint(
    smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    right, wrong = "docroute-right-key-7Hq2vN", "docroute-wrong-key-Xk93LpQ"
    monkeypatch.setenv("DOCROUTE_REAL_KEY", wrong)
    log = tmp_path / "server.log"
    with start_llama_server(smollm2_gguf, log, api_key=right) as server:
        config = _config(
            tmp_path,
            name="llama-keyed",
            preset="llamacpp",
            base_url=f"{server.url}/v1",
            model="smollm2",
            api_key_env="DOCROUTE_REAL_KEY",
        )
        summary, wall = _run(config)
    results, calls = _failed_run(tmp_path, summary, "llama-server --api-key (wrong key sent)", wall)
    assert len(results) == len(DOCS) and {r["status"] for r in results} == {"failed"}
    # Every chunk says the endpoint rejected the key (not no_route, not "attempts exhausted").
    assert {r["reason"] for r in results} == {"auth_error"}, results
    assert calls and {(c["outcome"], c["http_status"]) for c in calls} == {("auth_error", 401)}
    # The server's own words are kept ("Invalid API Key"), and the key itself never is.
    for c in calls:
        assert "invalid api key" in str(c["error"]).lower(), c
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert wrong.encode() not in path.read_bytes(), path
    assert wall < QUICK_S, f"{wall:.1f} s to find that the key is wrong"


def test_a_stopped_server_is_a_refused_connection(tmp_path: Path) -> None:
    port = free_port()  # where a stopped server was: nothing listens there now
    config = _config(
        tmp_path,
        name="llama-down",
        preset="llamacpp",
        base_url=f"http://127.0.0.1:{port}/v1",
        model="smollm2",
    )
    summary, wall = _run(config)
    results, calls = _failed_run(tmp_path, summary, "stopped (nothing listening)", wall)
    assert len(results) == len(DOCS) and {r["status"] for r in results} == {"failed"}
    # Refused until the endpoint is disabled for the run; the chunks after that say why.
    reasons = {r["reason"] for r in results}
    assert "connection_error" in reasons <= {"connection_error", "endpoint_disabled"}, results
    for r in results:
        assert "connection refused" in str(r["error"]).lower(), r
    assert calls and {c["outcome"] for c in calls} == {"connection_error"}
    for c in calls:
        assert "refused" in str(c["error"]).lower(), c
        assert (c["input_tokens"], c["output_tokens"]) == (0, 0), c
    assert wall < QUICK_S, f"{wall:.1f} s to find that nothing listens"
