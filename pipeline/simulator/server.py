"""Run the simulator: uvicorn in a daemon thread on a loopback socket bound beforehand.

    >>> with SimulatorServer() as sim:                       # doctest: +SKIP
    ...     base_url = sim.add_endpoint("eu", EndpointProfile(rate_429=0.2))
    ...     client = openai.OpenAI(base_url=base_url, api_key="sk-sim", max_retries=0)
    ...     client.chat.completions.create(model="gpt-4o-mini", messages=[...])
    ...     sim.requests("eu")[0].status
    200

``add_endpoint`` returns the base URL the endpoint's SDK wants (see ``protocols.base_url``):
``openai.OpenAI(base_url=…)`` for openai and gemini, ``anthropic.Anthropic(base_url=…)``,
``mistralai.client.Mistral(server_url=…)``.

The socket is bound when the URL is first needed (``url``, ``add_endpoint``) or at
``start``, so port 0 yields a free port known before any request. Only loopback
addresses are accepted: the simulator must never be reachable from the network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn

from pipeline.sim_profiles import EndpointProfile, RequestRecord, check_endpoint_name

from .app import build_app
from .protocols import base_url
from .state import SimulatorState

_START_TIMEOUT_S = 10.0
_BACKLOG = 2048


def loopback_host(host: str) -> str:
    """``host`` as an IPv4 loopback address, or ``ValueError``.

    >>> loopback_host("localhost"), loopback_host("127.0.0.1")
    ('127.0.0.1', '127.0.0.1')
    """
    address = "127.0.0.1" if host == "localhost" else host
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"simulator host {host!r} is not an IP address") from None
    if ip.version != 4 or not ip.is_loopback:
        raise ValueError(f"the simulator only binds IPv4 loopback (127.0.0.0/8), not {host!r}")
    return address


class SimulatorServer:
    """The simulated providers' server on loopback, with fault injection and quotas.

    ``clock`` (monotonic seconds) drives the rpm/tpm windows; tests may inject one.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = loopback_host(host)
        self._port = port
        self.state = SimulatorState(clock)
        self._socket: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the socket is bound to; binds it if that has not happened yet."""
        if self._address is None:
            host, port = self._bound().getsockname()[:2]
            self._address = (host, port)
        return self._address

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host, port = self.address
        return f"http://{host}:{port}"

    def base_url(self, name: str) -> str:
        """The base URL to give the SDK of endpoint ``name``'s protocol (openai if unknown)."""
        profile = self.state.profile(name)
        return base_url(self.url, name, profile.protocol if profile else "openai")

    def add_endpoint(self, name: str, profile: EndpointProfile | None = None) -> str:
        """Add (or replace, resetting its counters) an endpoint; return its SDK base URL."""
        self.state.set_profile(check_endpoint_name(name), profile or EndpointProfile())
        return self.base_url(name)

    def requests(self, endpoint: str | None = None) -> list[RequestRecord]:
        """The request log in arrival order (a copy), optionally of one endpoint."""
        return self.state.records(endpoint)

    def tokens_served(self, endpoint: str | None = None) -> tuple[int, int]:
        """(prompt, completion) token totals of the 200 answers."""
        return self.state.tokens_served(endpoint)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint: request counts by fault and by status, tokens of 200 answers."""
        return self.state.stats()

    def reset(self) -> None:
        """Clear the log and the per-endpoint counters; keep the profiles."""
        self.state.reset()

    def hold(self) -> None:
        """Hold every answer not yet sent (see ``SimulatorState.hold``)."""
        self.state.hold()

    def release(self, *, drop: bool = False) -> None:
        """Send (or with ``drop``, drop unanswered) the answers held since ``hold``."""
        self.state.release(drop=drop)

    def start(self) -> SimulatorServer:
        """Serve in a daemon thread; return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("this SimulatorServer was already started")
        sock = self._bound()
        sock.listen(_BACKLOG)
        config = uvicorn.Config(
            build_app(self.state),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            backlog=_BACKLOG,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"docroute-simulator {self.url}",
            daemon=True,
        )
        self._thread.start()
        self._wait_started()
        return self

    def stop(self) -> None:
        """Stop serving and release the port. Safe to call twice."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=2)
        if self._socket is not None:
            self._socket.close()

    def join(self, until: threading.Event | None = None, poll_s: float = 0.2) -> None:
        """Block until the server stops or ``until`` is set; polling keeps Ctrl-C working."""
        while self._thread is not None and self._thread.is_alive():
            if until is not None and until.is_set():
                return
            self._thread.join(timeout=poll_s)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bound(self) -> socket.socket:
        if self._socket is None:
            # proto IPPROTO_TCP (not 0) makes asyncio set TCP_NODELAY on accepted sockets;
            # without it every keep-alive request waits ~40 ms for a delayed ACK.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            self._socket = sock
        return self._socket

    def _wait_started(self) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the simulator's server thread stopped during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the simulator did not start within {_START_TIMEOUT_S:g} s")
            time.sleep(0.002)


def serve_forever(
    profiles: dict[str, EndpointProfile],
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[dict[str, str]], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve ``profiles`` until Ctrl-C (or ``stop`` is set); ``on_ready`` gets the base URLs.

    For ``docroute simulate``::

        serve_forever({"eu": EndpointProfile()}, port=8765, on_ready=print)
    """
    server = SimulatorServer(host, port)
    urls = {name: server.add_endpoint(name, profile) for name, profile in profiles.items()}
    with server:
        if on_ready is not None:
            on_ready(urls)
        with contextlib.suppress(KeyboardInterrupt):
            server.join(until=stop)
