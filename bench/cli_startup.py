"""CLI start-up benchmark: how long ``docroute`` takes to answer ``--help`` and ``--version``.

    .venv/bin/python bench/cli_startup.py             # median of 5 runs per command
    .venv/bin/python bench/cli_startup.py --runs 9

Each command runs as a fresh subprocess, the way a user types it (the installed
``docroute`` script next to this interpreter, else ``python -m flows.cli``), after one
uncounted warm-up run that fills the file-system cache. Prints one JSON object: per
command the median, min and max wall time in seconds, and whether the median meets the
goal of issue 15 (under a second). A command that exits non-zero (``--version`` before
it existed) is timed all the same and its exit code is kept beside the figure, so that
it never counts as meeting the goal; one that exceeds ``--timeout`` stops the benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["run", "--help"], ["--version"])
GOAL_S = 1.0
MAX_RUNS = 50


def docroute() -> list[str]:
    """The command a user runs: the venv's ``docroute`` script if installed."""
    script = Path(sys.executable).parent / "docroute"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def wall_time(argv: list[str], timeout: float) -> tuple[float, int]:
    """Seconds from start to exit of ``argv``, and its exit code."""
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{' '.join(argv)}: no answer within {timeout:g} s") from None
    return time.perf_counter() - start, done.returncode


def measure(argv: list[str], runs: int, timeout: float) -> dict[str, object]:
    """Median, min and max over ``runs`` timed runs, after one warm-up run."""
    wall_time(argv, timeout)
    timed = [wall_time(argv, timeout) for _ in range(runs)]
    times = [seconds for seconds, _ in timed]
    exit_code = max(code for _, code in timed)
    median = statistics.median(times)
    return {
        "median_s": round(median, 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "exit_code": exit_code,
        "meets_goal": exit_code == 0 and median < GOAL_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=5, help="timed runs per command, 1-50 (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per run (default: %(default)s)"
    )
    args = parser.parse_args()
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be between 1 and {MAX_RUNS}, got {args.runs}")
    base = docroute()
    results = {
        "docroute " + " ".join(cmd): measure(base + cmd, args.runs, args.timeout)
        for cmd in COMMANDS
    }
    print(
        json.dumps(
            {
                "runs": args.runs,
                "goal_s": GOAL_S,
                "python": sys.version.split()[0],
                "commands": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
