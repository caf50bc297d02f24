"""Child processes that end when docroute's process ends, however it ends.

On Linux the kernel signals a process whose parent dies if it asked to be
(``PR_SET_PDEATHSIG``); that holds for ``kill -9`` too, where no ``finally`` runs. The
ingest pool's workers ask for it when they start. A program docroute does not control
(Prefect's API server) is started through this module instead, which asks for it and then
``exec``s the program, so the request carries over:

    python -m pipeline.orphans PARENT_PID -- PROGRAM ARGS...
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only;
    a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def bound_to_parent(argv: list[str]) -> list[str]:
    """``argv`` as a command that the kernel stops (SIGTERM) when this process dies."""
    return [sys.executable, "-m", "pipeline.orphans", str(os.getpid()), "--", *argv]


def _main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m pipeline.orphans PARENT_PID -- PROGRAM ARGS...", file=sys.stderr)
        return 2
    die_with_parent(signal.SIGTERM)
    if os.getppid() != int(args[0]):  # the parent died before the request was made
        return 1
    os.execv(args[2], args[2:])
    return 1  # not reached: execv replaces this process or raises


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
