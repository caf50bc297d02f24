"""On a terminal ``docroute run`` draws a progress bar (rich) and leaves its periodic
progress lines to the log; in a pipe it prints the plain lines (``flows.terminal``).

Each test runs the real command in a subprocess: once on a pseudo-terminal, once on a
pipe, against the built-in simulator.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, sample_config_data, write_config

DEADLINE_S = 240.0  # a busy machine's Prefect server start, and the run


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    for var in ("OPENAI_API_KEY", "OPENAI_EU_API_KEY", "LLAMA_EU_API_KEY", "MISTRAL_API_KEY"):
        env.pop(var, None)
    return env | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DOCROUTE_PROGRESS_EVERY_S": "0.2",  # progress lines often, so there are some
        "COLUMNS": "160",
        "TERM": "xterm-256color",
    }


def _command(tmp_path: Path, run_id: str) -> list[str]:
    data = sample_config_data()
    data["corpus"]["include"] = ["eu/**/*.md", "us/**/*.md"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp_path, data)
    return [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--run-id", run_id]


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    main, child = pty.openpty()
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdin=child, stdout=child, stderr=child, start_new_session=True
    )
    os.close(child)
    out = b""
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(main, 65536)
            except OSError:  # the child side closed: the command has ended
                break
            if not data:
                break
            out += data
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), out.decode(errors="replace")


def test_on_a_terminal_a_bar_in_a_pipe_plain_progress_lines(tmp_path: Path) -> None:
    env = _env(tmp_path)
    code, screen = _on_a_terminal(_command(tmp_path / "tty", "t1"), env)
    assert code == 0, screen[-3000:]
    assert "━" in screen and "chunks" in screen, "rich drew its bar"
    assert "run t1: " in screen, "the summary follows the bar"
    assert "… " not in screen, "the periodic progress lines are the bar's on a terminal"

    piped = subprocess.run(
        _command(tmp_path / "pipe", "p1"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert piped.returncode == 0, piped.stderr[-3000:]
    text = piped.stdout + piped.stderr
    assert "━" not in text, "no bar where there is no terminal"
    assert "… " in text and " chunks" in text, "plain progress lines instead"
