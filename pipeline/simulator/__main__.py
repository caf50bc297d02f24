"""``python -m pipeline.simulator``: serve simulated endpoints until SIGTERM or Ctrl-C.

    python -m pipeline.simulator --port 8765 --profiles profiles.json

``profiles.json`` maps endpoint names to ``EndpointProfile`` fields (``-`` reads stdin), e.g.
``{"eu": {"protocol": "anthropic", "rate_503": 0.05}}``. When the server accepts
connections it prints one JSON line, ``{"url": …, "base_urls": {name: url}}``. It listens
on 127.0.0.1 only. With ``--watch-stdin`` it also exits when its stdin closes (its parent
went away).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pipeline.sim_profiles import EndpointProfile

from .server import SimulatorServer


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.watch_stdin and args.profiles == "-":
        raise SystemExit("--watch-stdin needs --profiles from a file, not stdin")
    profiles = _load_profiles(args.profiles)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.watch_stdin:
        threading.Thread(target=_set_at_eof, args=(stop,), daemon=True).start()
    server = SimulatorServer("127.0.0.1", args.port)
    urls = {name: server.add_endpoint(name, profile) for name, profile in profiles.items()}
    with server:
        print(json.dumps({"url": server.url, "base_urls": urls}), flush=True)
        server.join(until=stop)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.simulator", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument(
        "--profiles", default=None, help="JSON file of {name: profile} ('-' for stdin)"
    )
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin reaches end of file"
    )
    return parser


def _load_profiles(source: str | None) -> dict[str, EndpointProfile]:
    if source is None:
        return {}
    raw: Any = json.load(sys.stdin) if source == "-" else json.loads(Path(source).read_text())
    if not isinstance(raw, dict):
        raise SystemExit("--profiles must hold a JSON object of {name: profile}")
    return {str(name): EndpointProfile.model_validate(p) for name, p in raw.items()}


def _set_at_eof(stop: threading.Event) -> None:
    # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader holds its
    # lock, and interpreter shutdown then aborts with "could not acquire lock".
    fd = sys.stdin.fileno()
    while os.read(fd, 65_536):
        pass
    stop.set()


if __name__ == "__main__":
    sys.exit(main())
