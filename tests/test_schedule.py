"""Scheduling: prefect.yaml declares the nightly cron, and `docroute serve` really fires it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline.store import Store
from tests.conftest import REPO, sample_config_data, write_config


def test_prefect_yaml_declares_the_nightly_process_deployment() -> None:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    (dep,) = spec["deployments"]
    assert dep["schedules"][0]["cron"] == "0 2 * * *"
    assert dep["work_pool"]["name"] == "docroute"
    module, _, name = dep["entrypoint"].partition(":")
    assert module == "flows/nightly.py" and (REPO / module).exists()
    import flows.nightly

    flow = getattr(flows.nightly, name)
    assert flow.name == "nightly-batch"
    assert flow.retries and flow.retries >= 1, "a failed scheduled run is retried (and resumed)"
    assert set(dep["parameters"]) <= set(flow.parameters.properties)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(port: int, path: str, body: dict[str, object]) -> list[dict[str, object]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_serve_starts_a_local_server_and_its_schedule_fires(tmp_path: Path) -> None:
    data = sample_config_data()
    data["corpus"]["include"] = ["us/reports/*.md"]  # a small run
    config = write_config(tmp_path, data)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    for var in (
        "OPENAI_API_KEY",
        "OPENAI_EU_API_KEY",
        "LLAMA_EU_API_KEY",
        "DOCROUTE_SIMULATOR_URL",
    ):
        env.pop(var, None)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--cron",
            "* * * * *",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240  # server start + next minute boundary + the run
        deployment = None
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(2)
            try:
                found = _api(port, "/deployments/filter", {})
            except OSError:
                continue
            deployment = next((d for d in found if d["name"] == "nightly"), None)
            runs = _api(port, "/flow_runs/filter", {})
            if any(r["state_type"] == "COMPLETED" for r in runs):
                break
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        assert deployment is not None, "serve did not register the deployment"
        # the Prefect UI is served where serve said it is
        assert f"Prefect UI  http://127.0.0.1:{port}" in (tmp_path / "serve.log").read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and "<html" in page.read().decode().lower()
        assert deployment["schedules"][0]["schedule"]["cron"] == "* * * * *"
        store = Store(tmp_path / "out")
        runs = store.read("SELECT flow, status, chunks FROM runs").rows
        assert runs and runs[0][0] == "nightly_batch" and runs[0][1] == "succeeded", (
            tmp_path / "serve.log"
        ).read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    # serve stops the server it started
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)


def test_a_prefect_server_that_does_not_start_in_time_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.prefect_api import LocalServer
    from pipeline.errors import DocrouteError

    monkeypatch.setenv("DOCROUTE_PREFECT_STARTUP_S", "0.01")
    with pytest.raises(DocrouteError) as info:
        LocalServer.start()
    text = str(info.value)
    assert "\n" not in text and "within 0.01 s" in text
    assert "set DOCROUTE_PREFECT_STARTUP_S=300, or PREFECT_API_URL" in text
    monkeypatch.setenv("DOCROUTE_PREFECT_STARTUP_S", "soon")
    with pytest.raises(DocrouteError, match="expected seconds"):
        LocalServer.start()
