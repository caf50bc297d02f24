"""Interruptions end cleanly, as a user at a terminal causes them.

These runs use no ``PREFECT_API_URL``: docroute then starts the Prefect API server a run
reports to (see ``flows.prefect_api``), which is what a new user's ``docroute run`` does.
Ctrl-C is sent to the whole process group, as a terminal sends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.simulator import SimulatorServer
from pipeline.store import Store
from pipeline.store.journal import recover
from tests.conftest import REPO
from tests.test_crash import _config, _corpus

#: Far above the few seconds a Ctrl-C takes, far below the 2.5 minutes it used to take.
STOP_WITHIN_S = 60


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect database for the module: its migrations run once."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server
        server.release(drop=True)


def _start(tmp: Path, sim: SimulatorServer, home: Path, run_id: str) -> subprocess.Popen[str]:
    """``docroute run`` in a process group of its own, the way a terminal starts it."""
    _corpus(tmp / "corpus", 60)
    config = _config(tmp, batch_size=20, parallel_batches=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {
        "DOCROUTE_SIMULATOR_URL": sim.url,
        "PYTHONPATH": str(REPO),
        "PREFECT_HOME": str(home),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--run-id", run_id],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _in_flight(
    tmp: Path, sim: SimulatorServer, home: Path, run_id: str
) -> tuple[subprocess.Popen[str], set[int]]:
    """A run with calls in flight (their answers held), and its helper processes."""
    proc = _start(tmp, sim, home, run_id)
    deadline = time.monotonic() + 240  # Prefect's server starts first: slow on a busy box
    while len(sim.requests()) < 3:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run never called the simulator"
        time.sleep(0.02)
    sim.hold()
    helpers = _descendants(proc.pid)
    assert helpers, "the run started no Prefect server of its own"
    return proc, helpers


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _all_gone(pids: set[int], within_s: float = 30) -> set[int]:
    deadline = time.monotonic() + within_s
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def _ctrl_c(proc: subprocess.Popen[str], times: int = 1) -> str:
    """Press Ctrl-C ``times`` in the run's terminal; its stderr once it has exited 130
    without a traceback."""
    for n in range(times):
        if n:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{times} Ctrl-C had not stopped the run after {STOP_WITHIN_S} s")
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return err


def test_ctrl_c_stops_in_seconds_records_interrupted_and_names_the_resume_command(
    tmp_path: Path, sim: SimulatorServer, prefect_home: Path
) -> None:
    proc, helpers = _in_flight(tmp_path, sim, prefect_home, "ctrl-c")
    sent = time.monotonic()
    err = _ctrl_c(proc)
    took = time.monotonic() - sent
    assert "--resume ctrl-c`" in err and "docroute run --config" in err, err[-2000:]
    record = Store(tmp_path / "out").latest_run("ctrl-c")
    assert record is not None and record.status == "interrupted", (record, took)
    assert "docroute run --resume ctrl-c" in (record.message or "")
    # the calls held in flight were journaled, at their reserved worst case; every reader
    # (`docroute sql`, the next run) recovers them into the ledger
    store = Store(tmp_path / "out")
    recover(store)
    interrupted = store.read(
        "SELECT count(*), min(cost_usd) FROM ledger WHERE run_id = 'ctrl-c' "
        "AND outcome = 'interrupted'"
    )
    count, cheapest = interrupted.rows[0]
    assert count >= 1 and cheapest > 0, interrupted.rows
    assert not _all_gone(helpers), "a helper process outlived the interrupted run"


def test_a_second_ctrl_c_quits_at_once_without_a_traceback(
    tmp_path: Path, sim: SimulatorServer, prefect_home: Path
) -> None:
    proc, helpers = _in_flight(tmp_path, sim, prefect_home, "twice")
    err = _ctrl_c(proc, times=2)
    assert "--resume twice`" in err, err[-2000:]
    assert not _all_gone(helpers), "a helper process outlived the run"


def test_kill_9_of_the_run_ends_the_prefect_server_it_started(
    tmp_path: Path, sim: SimulatorServer, prefect_home: Path
) -> None:
    proc, helpers = _in_flight(tmp_path, sim, prefect_home, "killed")
    proc.kill()
    proc.wait(timeout=10)
    left = _all_gone(helpers)
    for pid in left:  # leave nothing behind on the machine, even when failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived kill -9 of their run: {sorted(left)}"
