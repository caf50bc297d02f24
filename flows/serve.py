"""``docroute serve``: the nightly schedule, on this machine.

Prefect's embedded (ephemeral) mode runs flows but never fires schedules, so serving
needs an API server. If ``PREFECT_API_URL`` is set, that server is used; otherwise a
local ``prefect server start`` is launched on 127.0.0.1 (SQLite under ``PREFECT_HOME``)
and stopped again when serving ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

from pipeline.errors import DocrouteError

HEALTH_TIMEOUT_S = 90


def serve(config_path: Path, *, cron: str, timezone: str, name: str, port: int) -> None:
    from flows.nightly import scheduled_nightly_batch

    api_url = PREFECT_API_URL.value()
    server = None
    if not api_url:
        api_url = f"http://127.0.0.1:{port}/api"
        server = None if _healthy(port) else start_local_server(port)
    print(
        f"docroute serve: Prefect API {api_url} · deployment nightly-batch/{name} · cron "
        f"{cron!r} ({timezone}) · config {config_path}",
        flush=True,
    )
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            scheduled_nightly_batch.serve(
                name=name,
                cron=cron,
                parameters={"config_path": str(config_path)},
                tags=["docroute", "nightly"],
                description="docroute nightly batch",
            )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def start_local_server(port: int) -> subprocess.Popen[bytes]:
    """``prefect server start`` on 127.0.0.1:``port``; returns once its API answers."""
    env = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    print(f"starting a local Prefect server on 127.0.0.1:{port} …", flush=True)
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("prefect")),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DocrouteError(f"prefect server exited with code {proc.returncode} while starting")
        if _healthy(port):
            return proc
        time.sleep(0.5)
    proc.terminate()
    raise DocrouteError(
        f"prefect server did not answer on 127.0.0.1:{port} within {HEALTH_TIMEOUT_S}s"
    )


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
