"""Errors that say what happened: every adapter keeps the server's own words whatever the
shape of its error body (scrubbed of keys, capped), and a refused connection says so.

The bodies come from a tiny loopback HTTP server in this file (the shapes real servers use:
llama.cpp, FastAPI's llama-cpp-python, Ollama, a proxy's plain text); the adapters are the
real SDKs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline import errors
from pipeline.providers import ChatRequest, EndpointSettings, build_provider
from pipeline.providers.errmap import MESSAGE_CAP, cap, server_message

KINDS = ["openai", "openai_compatible", "anthropic", "mistral"]
KEY = "sk-" + "test-fake-key-0123456789"  # a fake, assembled so it never reads as a key
MISTRAL_KEY = "sk-" + "test-fake-mistral-key-0001"  # the same


class _Canned(BaseHTTPRequestHandler):
    """Answers every POST with the server's ``answer``: (status, content type, body)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        status, ctype, body = self.server.answer  # type: ignore[attr-defined]
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _fail(kind: str, url: str) -> errors.ProviderError:
    """The error one call to ``url`` through ``kind``'s real SDK ends in."""

    async def go() -> errors.ProviderError:
        settings = EndpointSettings(
            name="ep", base_url=url, api_key=SecretStr(KEY), timeout_s=5, strict_validation=True
        )
        provider = build_provider(kind, settings)
        request = ChatRequest(
            model="m",
            messages=[{"role": "user", "content": "hello"}],
            schema_name="s",
            json_schema={"type": "object", "properties": {}, "additionalProperties": False},
            max_output_tokens=16,
        )
        try:
            await provider.complete(request)
        except errors.ProviderError as exc:
            return exc
        finally:
            await provider.aclose()
        raise AssertionError("the call succeeded")

    return asyncio.run(go())


LLAMA_CPP = '{"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}}'
BODIES = {
    "llama.cpp": (401, "application/json", LLAMA_CPP, errors.AuthError, "Invalid API Key"),
    "fastapi": (401, "application/json", '{"detail": "Bad key"}', errors.AuthError, "Bad key"),
    "fastapi-422": (
        422,
        "application/json",
        '{"detail": [{"loc": ["body", "x"], "msg": "Field required", "type": "missing"}]}',
        errors.BadRequest,
        "Field required",
    ),
    "ollama": (
        404,
        "application/json",
        '{"error": "model \\"m\\" not found, try pulling it first"}',
        errors.BadRequest,
        'model "m" not found, try pulling it first',
    ),
    "message": (
        500,
        "application/json",
        '{"message": "worker crashed", "code": "boom"}',
        errors.ServerError,
        "worker crashed",
    ),
    "plain": (502, "text/plain", "upstream connect error", errors.ServerError, "upstream connect"),
    "echoed-key": (
        401,
        "text/plain",
        f"Incorrect API key provided: {KEY}",
        errors.AuthError,
        "Incorrect API key provided: [redacted]",
    ),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", list(BODIES))
def test_the_servers_own_words_reach_the_error_whatever_the_body(
    canned: ThreadingHTTPServer, kind: str, shape: str
) -> None:
    status, ctype, body, error_type, words = BODIES[shape]
    canned.answer = (status, ctype, body)  # type: ignore[attr-defined]
    exc = _fail(kind, f"http://127.0.0.1:{canned.server_port}/v1")
    assert type(exc) is error_type and exc.http_status == status
    assert words in exc.message, exc.message
    assert KEY not in exc.message


@pytest.mark.parametrize("kind", KINDS)
def test_a_long_page_is_capped_and_still_scrubbed(canned: ThreadingHTTPServer, kind: str) -> None:
    page = "<html><body>" + "gateway trouble " * 200 + f"token {KEY}</body></html>"
    canned.answer = (502, "text/html", page)  # type: ignore[attr-defined]
    exc = _fail(kind, f"http://127.0.0.1:{canned.server_port}/v1")
    assert type(exc) is errors.ServerError
    assert "gateway trouble" in exc.message and len(exc.message) <= MESSAGE_CAP
    assert "\n" not in exc.message and KEY[:12] not in exc.message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_connection_names_the_url_and_the_reason(kind: str) -> None:
    port = _closed_port()
    exc = _fail(kind, f"http://127.0.0.1:{port}/v1")
    assert type(exc) is errors.ConnectionDropped, "not a timeout: nothing was waited for"
    assert not exc.billing_unknown, "no request left: booked at $0"
    assert f"could not connect to http://127.0.0.1:{port}/v1" in exc.message, exc.message
    assert exc.message.endswith("(connection refused)")


def test_server_message_reads_every_shape() -> None:
    assert server_message({"error": {"message": "a"}}) == "a"
    assert server_message([{"error": {"message": "b", "status": "X"}}]) == "b"
    assert server_message({"detail": [{"msg": "c"}, {"msg": "d"}]}) == "c; d"
    assert server_message('{"error": "e"}') == "e"
    assert server_message("  plain words \n") == "plain words"
    assert server_message({"error": {"code": 1}}) is None
    assert server_message("") is None and server_message(None) is None
    assert cap("x" * 600) == "x" * (MESSAGE_CAP - 1) + "…"


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_whose_eu_key_is_rejected_says_so_in_results_and_summary(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.nightly import nightly_batch
    from flows.summary import format_summary, summary_markdown
    from pipeline.simulator import EndpointProfile
    from pipeline.store import Store
    from tests.conftest import sample_config_data, write_config

    monkeypatch.setenv("DOCROUTE_TEST_MISTRAL_KEY", MISTRAL_KEY)
    monkeypatch.setenv("DOCROUTE_SIMULATOR_URL", simulator.url)
    url = simulator.add_endpoint(
        "mistral-eu", EndpointProfile(protocol="mistral", api_key="sk-the-right-one-2345")
    )
    data = sample_config_data()
    mistral = next(p for p in data["providers"] if p["name"] == "mistral-eu")
    mistral.update(base_url=url, api_key_env="DOCROUTE_TEST_MISTRAL_KEY", simulate="never")
    mistral.pop("simulator", None)
    data["providers"] = [mistral] + [p for p in data["providers"] if p["region"] != "eu"]
    data["routing"].update(concurrency=1, parallel_batches=1)  # one 401, then not sent
    config = write_config(tmp_path, data)
    summary = asyncio.run(nightly_batch(config_path=str(config)))

    store = Store(tmp_path / "out")
    rows = store.read(
        "SELECT reason, attempts, error, path FROM results WHERE run_id = ? AND status <> "
        "'succeeded'",
        [summary["run_id"]],
    ).rows
    assert {r[0] for r in rows} == {"auth_error", "no_route"}
    assert all(path.startswith("ch/") for reason, _, _, path in rows if reason == "no_route")
    auth = [(attempts, error) for reason, attempts, error, _ in rows if reason == "auth_error"]
    assert any(p.startswith("eu/") for reason, _, _, p in rows if reason == "auth_error")
    unsent = [error for attempts, error in auth if attempts == 0]
    assert len(unsent) == len(auth) - 1, "one chunk got the 401; the others were not sent"
    assert all(e.startswith("not sent: mistral-eu rejected the key (") for e in unsent)
    assert len(simulator.requests("mistral-eu")) == 1
    (disabled,) = summary["disabled"]
    assert disabled["why"].startswith("mistral-eu rejected the key (")
    assert (disabled["not_sent"], disabled["failed"]) == (len(unsent), 1)
    text = format_summary(summary, config)
    assert "disabled   mistral-eu rejected the key (" in text
    assert f"{len(unsent)} chunk(s) not sent" in text
    assert MISTRAL_KEY not in text
    assert any("--reason auth_error" in a for a in summary["advice"])
    markdown = summary_markdown(summary)  # the Prefect artifact says it too
    assert f"| {disabled['why']} | {len(unsent)} | 1 |" in markdown
