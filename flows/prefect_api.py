"""The Prefect API server a command's flow runs report to.

With ``PREFECT_API_URL`` set, that server is used as it is. Without it, Prefect's embedded
mode would start a temporary server of its own, in docroute's process group and outside
its control: Ctrl-C in a terminal kills that server mid-run (Prefect then retries against
it for minutes before the run can end), and ``kill -9`` of docroute leaves it running for
good. So docroute starts the server itself (the same program Prefect's embedded mode
runs), and:

- in a session of its own, so the terminal's Ctrl-C is docroute's alone to handle;
- through :mod:`pipeline.orphans`, so the kernel stops it when docroute's process dies;
- stopped only after Prefect's log and event workers have delivered what they hold.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO

import prefect
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

from pipeline.errors import DocrouteError
from pipeline.orphans import bound_to_parent

#: A busy 2-core machine took 34-52 s to start Prefect's server (Prefect's own limit: 20 s).
STARTUP_TIMEOUT_S = 120.0
#: The environment variable that changes it.
STARTUP_TIMEOUT_ENV = "DOCROUTE_PREFECT_STARTUP_S"


def startup_timeout_s() -> float:
    """How long to wait for the local Prefect server: ``$DOCROUTE_PREFECT_STARTUP_S``, or
    ``STARTUP_TIMEOUT_S``."""
    text = os.environ.get(STARTUP_TIMEOUT_ENV, "").strip()
    if not text:
        return STARTUP_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise DocrouteError(f"{STARTUP_TIMEOUT_ENV}={text!r}: expected seconds, e.g. 300")
    return value


#: How long Prefect's log and event workers may take to deliver what they hold at the end.
DRAIN_TIMEOUT_S = 10.0


@contextmanager
def prefect_api() -> Iterator[str]:
    """The URL of the Prefect API for the flow runs started inside this block."""
    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    print(
        f"docroute: starting a temporary Prefect API server on 127.0.0.1 (up to "
        f"{startup_timeout_s():g} s; PREFECT_API_URL uses a running one) …",
        file=sys.stderr,
        flush=True,
    )
    server = LocalServer.start()
    try:
        # No UI on this temporary server (it ends with the command): no "View at" link to
        # a page that would not be there (``docroute serve`` serves the UI)
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
            try:
                yield server.api_url
            finally:
                drain_prefect_workers()
    finally:
        server.stop()


def drain_prefect_workers() -> None:
    """Let Prefect's background workers send their queued logs and events (bounded)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with suppress(RuntimeError):  # never started, or called inside an event loop
            worker.drain_all(timeout=DRAIN_TIMEOUT_S)


class LocalServer:
    """A Prefect API server on 127.0.0.1 that lives no longer than this process."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
        self.proc, self.port, self._log = proc, port, log

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        """Where the Prefect UI is, when the server was started with ``ui``."""
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        port: int | None = None,
        *,
        ui: bool = False,
        services: bool = False,
        timeout_s: float | None = None,
    ) -> LocalServer:
        """Start the server and return once its API answers. ``services`` runs Prefect's
        loop services too (the scheduler: needed to fire schedules); ``ui`` serves the UI."""
        port = port or _free_port()
        timeout_s = startup_timeout_s() if timeout_s is None else timeout_s
        env = os.environ | {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true" if ui else "false",
            "PREFECT__SERVER_FINAL": "1",
        }
        if not services:  # the embedded mode's set: what running flows needs, no scheduler
            env["PREFECT__SERVER_EPHEMERAL"] = "1"
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop(): it outlives start())
        proc = subprocess.Popen(
            bound_to_parent(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the terminal's Ctrl-C does not reach it
        )
        server = cls(proc, port, log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                server.stop()
                raise DocrouteError(
                    f"Prefect's API server on 127.0.0.1:{port} exited with code "
                    f"{proc.returncode} while starting: {server.output_tail()}"
                )
            if healthy(port):
                return server
            time.sleep(0.25)
        tail = server.output_tail()
        server.stop()
        last = tail.splitlines()[-1] if tail else ""  # one line, not a traceback
        raise DocrouteError(
            f"Prefect's API server did not answer on 127.0.0.1:{port} within {timeout_s:g} s"
            f"{' (' + last[:200] + ')' if last else ''}: a busy machine may need longer, "
            f"set {STARTUP_TIMEOUT_ENV}=300, or PREFECT_API_URL to a running server"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def output_tail(self, limit: int = 600) -> str:
        try:
            self._log.seek(0)
            text = self._log.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return text[-limit:]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
