"""``docroute serve``: the nightly schedule, on this machine.

Prefect's embedded (ephemeral) mode runs flows but never fires schedules, so serving
needs an API server. If ``PREFECT_API_URL`` is set, that server is used; otherwise a
local Prefect server (with its scheduler and its UI, at the printed address) is launched
on 127.0.0.1 (SQLite under ``PREFECT_HOME``) and stopped again when serving ends, or by
the kernel if this process is killed (see :mod:`flows.prefect_api`).
"""

from __future__ import annotations

from pathlib import Path

from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

from flows.prefect_api import LocalServer, drain_prefect_workers, healthy, startup_timeout_s


def serve(config_path: Path, *, cron: str, timezone: str, name: str, port: int) -> None:
    from flows.nightly import scheduled_nightly_batch

    api_url = PREFECT_API_URL.value()
    ui_url = PREFECT_UI_URL.value()
    server = None
    if not api_url:
        api_url, ui_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
        if not healthy(port):
            print(
                f"starting a local Prefect server with its UI on 127.0.0.1:{port} (up to "
                f"{startup_timeout_s():g} s on a busy machine) …",
                flush=True,
            )
            server = LocalServer.start(port, services=True, ui=True)
    print(
        f"docroute serve: Prefect API {api_url} · deployment nightly-batch/{name} · cron "
        f"{cron!r} ({timezone}) · config {config_path}",
        flush=True,
    )
    if ui_url:
        print(f"  Prefect UI  {ui_url}  (deployments, flow runs, task runs, artifacts)", flush=True)
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
        drain_prefect_workers()
        if server is not None:
            server.stop()
