"""Runs at once on one output root, in real processes: a second run of the same config is
refused naming the live one; runs of different configs share ``budget.monthly_usd``
through their allocations (a live run's allocation, not its ledger rows, counts; a dead
run's allocation is stale)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import main
from pipeline.config import load_config
from pipeline.models import LedgerEntry
from pipeline.opening import Opening
from pipeline.run import Run
from pipeline.store import Store
from pipeline.store.allocations import RunConflictError
from tests.conftest import REPO, sample_config_data, write_config

# Opens run argv[2] of config argv[1] (Run.open: lock, seat, lease), prints its cap, and
# keeps it open until a line arrives on stdin: a live run in another process.
HOLDER = """
import asyncio, sys
from pipeline.config import load_config
from pipeline.opening import Opening
from pipeline.run import Run

async def hold():
    cfg = load_config(sys.argv[1])
    async with Run.open(cfg, Opening.new(sys.argv[2], flow="test")) as run:
        print(f"open {run.budget.cap_usd:.6f}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(hold())
"""


def config_at(folder: Path, root: str, **budget: Any) -> Path:
    """The sample config in ``folder`` writing to ``root``, with ``budget`` fields set."""
    folder.mkdir(parents=True, exist_ok=True)
    data = sample_config_data()
    data["budget"].update(budget)
    path = write_config(folder, data)
    data = yaml.safe_load(path.read_text())
    data["output"] = {"root": root}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Holder:
    """A process holding a run open (see ``HOLDER``)."""

    def __init__(self, config: Path, run_id: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(config), run_id],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the run is open once this arrives
        if not line.startswith("open "):
            self.proc.kill()
            raise AssertionError(f"holder did not open: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.cap = float(line.split()[1])

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=60) == 0, self.proc.stderr.read()  # type: ignore[union-attr]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def holders(sim_env: Any) -> Iterator[list[Holder]]:
    """Holders started by a test; any left open are killed at the end."""
    started: list[Holder] = []
    yield started
    for holder in started:
        if holder.proc.poll() is None:
            holder.kill()


def env_with(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def cap_of(config: Path, run_id: str) -> float:
    """The cap ``Run.open`` gives ``run_id`` in this process (opened and closed at once)."""

    async def go() -> float:
        async with Run.open(load_config(config), Opening.new(run_id, flow="test")) as run:
            return run.budget.cap_usd

    return asyncio.run(go())


def spend(store: Store, run_id: str, usd: float) -> None:
    """A committed ledger row of ``run_id`` costing ``usd``, started now."""
    entry = LedgerEntry(
        run_id=run_id,
        chunk_id="c-" + run_id,
        attempt=1,
        provider="sim",
        model="m",
        region="eu",
        mode="sync",
        started_at=time.time(),
        latency_ms=1.0,
        input_tokens=1,
        output_tokens=1,
        cached_input_tokens=0,
        cache_write_tokens=0,
        cost_usd=usd,
        reserved_usd=usd,
        outcome="ok",
        http_status=200,
        error=None,
        attempt_id="a-" + run_id,
    )
    store.write_rows("ledger", run_id, [entry])


def test_a_second_run_of_the_same_config_is_refused_naming_the_live_one(
    tmp_path: Path, holders: list[Holder], capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "out")
    config = config_at(tmp_path / "a", root, run_usd=1.0)
    live = Holder(config, "r-live", env_with())
    holders.append(live)

    with pytest.raises(RunConflictError) as refused:
        cap_of(config, "r-second")
    message = str(refused.value)
    assert "r-live" in message and f"pid {live.proc.pid}" in message and "since" in message
    assert "--resume r-live" in message and "Wait" in message
    # The command line says the same and exits 2, before any record of the refused run.
    assert main(["run", "--config", str(config), "--run-id", "r-third"]) == 2
    assert "r-live" in capsys.readouterr().err
    assert Store(root).latest_run("r-third") is None

    live.finish()
    assert cap_of(config, "r-after") == 1.0  # once it ended, the same config runs again


def test_runs_of_different_configs_share_the_monthly_cap_across_processes(
    tmp_path: Path, holders: list[Holder], caplog: pytest.LogCaptureFixture
) -> None:
    root = str(tmp_path / "out")
    first = config_at(tmp_path / "a", root, run_usd=0.8, monthly_usd=1.0)
    second = config_at(tmp_path / "b", root, run_usd=0.7, monthly_usd=1.0)
    store = Store(root)
    spend(store, "r-ended", 0.1)  # a run that ended this month

    a = Holder(first, "r-a", env_with())
    holders.append(a)
    assert a.cap == pytest.approx(0.8)
    spend(store, "r-a", 0.3)  # A commits a batch: its allocation already covers it
    caplog.set_level("WARNING")
    assert cap_of(second, "r-b") == pytest.approx(1.0 - 0.1 - 0.8)
    assert "r-a (0.80 USD)" in caplog.text and "instead of its cap of 0.70" in caplog.text

    a.kill()  # a dead run's allocation is stale: its ledger spend counts instead
    assert cap_of(second, "r-c") == pytest.approx(1.0 - 0.1 - 0.3)
    first_again = Holder(first, "r-d", env_with())  # the same config as A: A is gone
    holders.append(first_again)
    assert first_again.cap == pytest.approx(0.6)
    first_again.finish()
