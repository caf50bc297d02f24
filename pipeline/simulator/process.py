"""The simulator in a child process, for load tests and anything that must not share the GIL.

    with SimulatorProcess({"eu": EndpointProfile(rate_429=0.1)}) as sim:
        client = openai.OpenAI(base_url=sim.base_url("eu"), api_key="sk-sim")
        ...
        sim.stats()["eu"]["by_fault"]     # {"none": 97, "rate_limited": 3}
        sim.tokens_served("eu")           # (prompt, completion) of the 200 answers

The child is ``python -m pipeline.simulator --profiles FILE --watch-stdin``: it listens on
127.0.0.1 only, prints one JSON line with its URLs when ready, and exits on SIGTERM, on
SIGINT, or when this process goes away (its stdin closes). Questions go over the
``/_sim/*`` admin routes.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pipeline.sim_profiles import EndpointProfile, RequestRecord, check_endpoint_name

from .protocols import base_url

_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the pipeline package
_HTTP_TIMEOUT_S = 30.0


class SimulatorProcess:
    """A ``SimulatorServer`` serving ``profiles`` in a child process (see the module doc)."""

    def __init__(
        self,
        profiles: dict[str, EndpointProfile] | None = None,
        *,
        port: int = 0,
        start_timeout_s: float = 30.0,
    ) -> None:
        self._profiles = {check_endpoint_name(n): p for n, p in (profiles or {}).items()}
        self._port = port
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running child."""
        if self._url is None:
            raise RuntimeError("the SimulatorProcess is not running")
        return self._url

    def base_url(self, name: str) -> str:
        """The base URL to give the SDK of endpoint ``name``'s protocol."""
        profile = self._profiles.get(name)
        return base_url(self.url, name, profile.protocol if profile else "openai")

    def add_endpoint(self, name: str, profile: EndpointProfile | None = None) -> str:
        """Add (or replace) an endpoint in the running child; return its SDK base URL."""
        profile = profile or EndpointProfile()
        body = profile.model_dump(mode="json")
        answer = self._call("PUT", f"/_sim/endpoints/{check_endpoint_name(name)}", body)
        self._profiles[name] = profile
        return str(answer["base_url"])

    def requests(self, endpoint: str | None = None) -> list[RequestRecord]:
        """The child's request log (all of it: prefer ``stats`` for big runs)."""
        query = "" if endpoint is None else "?" + urllib.parse.urlencode({"endpoint": endpoint})
        return [RequestRecord(**r) for r in self._call("GET", "/_sim/requests" + query)]

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint: requests, ``by_fault``, ``by_status``, tokens of 200 answers."""
        return dict(self._call("GET", "/_sim/stats")["endpoints"])

    def tokens_served(self, endpoint: str | None = None) -> tuple[int, int]:
        """(prompt, completion) token totals of the 200 answers."""
        chosen = [s for n, s in self.stats().items() if endpoint is None or n == endpoint]
        return (
            sum(s["prompt_tokens"] for s in chosen),
            sum(s["completion_tokens"] for s in chosen),
        )

    def reset(self) -> None:
        """Clear the child's log and counters; keep the profiles."""
        self._call("POST", "/_sim/reset", {})

    def start(self) -> SimulatorProcess:
        """Start the child and wait for its ready line."""
        if self._process is not None:
            raise RuntimeError("this SimulatorProcess was already started")
        profiles = {n: p.model_dump(mode="json") for n, p in self._profiles.items()}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(profiles, f)
        try:
            command = [sys.executable, "-m", "pipeline.simulator", "--port", str(self._port)]
            self._process = subprocess.Popen(
                [*command, "--profiles", f.name, "--watch-stdin"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_child_env(),
            )
            assert self._process.stdout is not None
            ready = _read_line(self._process.stdout, self._start_timeout_s)
        finally:
            os.unlink(f.name)
        if ready is None:
            self.stop()
            raise RuntimeError(
                f"the simulator process did not become ready in {self._start_timeout_s:g} s"
            )
        self._url = json.loads(ready)["url"]
        return self

    def stop(self) -> None:
        """SIGTERM the child and wait for it (SIGKILL after 5 s). Safe to call twice."""
        process, self._process = self._process, None
        self._url = None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response:  # loopback
            return json.loads(response.read())


def _child_env() -> dict[str, str]:
    """This environment, with the package importable whatever the working directory."""
    env = dict(os.environ)
    paths = [str(_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _read_line(stream: IO[bytes], timeout_s: float) -> str | None:
    """One line of ``stream`` within ``timeout_s`` (None if it ends or takes longer)."""
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout_s)
    except queue.Empty:
        return None
    return line.decode() if line.strip() else None
