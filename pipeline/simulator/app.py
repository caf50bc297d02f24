"""The simulator's ASGI app: routes, and the decision of what each request gets.

Routes::

    POST /{endpoint}/v1/chat/completions   openai, gemini and mistral endpoints
    POST /{endpoint}/v1/messages           anthropic endpoints
    /{endpoint}/v1/files…                  openai and mistral endpoints (``batch_openai``)
    /{endpoint}/v1/batches…                openai endpoints: the Batch API (``batch_openai``)
    /{endpoint}/v1/messages/batches…       anthropic endpoints (``batch_anthropic``)
    /{endpoint}/v1/batch/jobs…             mistral endpoints (``batch_mistral``)
    PUT  /_sim/endpoints/{name}            register or replace a profile (JSON body)
    GET  /_sim/requests[?endpoint=name]    the request log, as JSON
    GET  /_sim/stats                       per endpoint: counts by fault and status, tokens
    POST /_sim/reset                       forget the log and counters, keep the profiles
    GET  /_sim/health                      {"status": "ok", "endpoints": [...]}

One chat request, in order, whatever its protocol (the endpoint's ``wire`` reads and writes
the bodies): unknown endpoint or a route of another protocol → 404; wrong key → 401;
malformed body → 400; over the ``rpm`` / ``tpm`` window → 429 with ``retry-after`` (none of
these draws or sleeps). Then a ``random.Random`` seeded with ``(profile.seed, endpoint,
sha256(body), n-th time this body came)`` draws the latency (slept with ``asyncio.sleep``)
and the fault: ``script[n]`` for the n-th admitted request, else 500 for the first
``fail_first``, else one draw split by the ``rate_*`` shares (429, 500, overloaded, timeout,
dropped, truncated, refusal), else a normal answer. A normal answer is schema-invalid for
the first ``invalid_first`` answers or with share ``invalid_rate``, and cut with finish
reason "length" when it exceeds the request's max tokens. A retried identical body has a
new draw, so it can succeed, and the run stays reproducible. Which fault, and what each error
answer says, are plain functions of ``faults``; the draws, the answer and the log record are
``exchange``'s (shared with batch jobs); this module sleeps, holds, answers over HTTP, logs.

    >>> app = build_app(SimulatorState())
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.sim_profiles import (
    NO_RESPONSE,
    EndpointProfile,
    Fault,
    check_endpoint_name,
)

from . import batch_anthropic, batch_mistral
from .batch_openai import batch_routes
from .exchange import draw, generate, invalid_by_profile, record_of
from .faults import (
    ERROR_FAULTS,
    FAULT_OF,
    choose_fault,
    format_problem,
    injected_problem,
    key_problem,
    quota_problem,
)
from .protocols import WIRES, base_url
from .state import Admission, SimulatorState
from .wire import BadRequest, ChatCall, Problem, Wire

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

#: The wire that answers a route's 404 when the endpoint is unknown.
_ROUTE_WIRES: dict[str, Wire] = {
    "/v1/chat/completions": WIRES["openai"],
    "/v1/messages": WIRES["anthropic"],
}


class DropConnection(BaseException):
    """Raised by the handler to close the TCP connection without any HTTP response.

    A ``BaseException`` so Starlette's error handlers (which catch ``Exception``) do not
    turn it into a 500; ``_ConnectionDropper`` catches it outside them.
    """


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Compact UTF-8 JSON with ``content-type: application/json``, as the APIs send."""
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, status, headers, media_type="application/json")


def build_app(state: SimulatorState) -> ASGIApp:
    """The ASGI app serving ``state``'s endpoints."""

    def chat_route(path: str) -> Route:
        async def chat(request: Request) -> Response:
            return await _chat(state, request, path)

        return Route("/{endpoint}" + path, chat, methods=["POST"])

    async def put_endpoint(request: Request) -> Response:
        return await _put_endpoint(state, request)

    async def list_requests(request: Request) -> Response:
        endpoint = request.query_params.get("endpoint")
        return json_response([r.to_dict() for r in state.records(endpoint)])

    async def stats(request: Request) -> Response:
        return json_response({"endpoints": state.stats()})

    async def reset(request: Request) -> Response:
        state.reset()
        return json_response({"status": "reset"})

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "endpoints": state.endpoint_names()})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return _error_response(WIRES["openai"], _not_found(request), status_override=status)

    async def crash(request: Request, exc: Exception) -> Response:
        # A simulator bug still answers in the API's shape; uvicorn logs the traceback.
        return _error_response(WIRES["openai"], Problem("server_error"))

    routes = [
        *(chat_route(path) for path in _ROUTE_WIRES),
        *batch_anthropic.batch_routes(state),
        *batch_mistral.batch_routes(state),
        *batch_routes(state),
        Route("/_sim/endpoints/{name}", put_endpoint, methods=["PUT"]),
        Route("/_sim/requests", list_requests, methods=["GET"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/health", health, methods=["GET"]),
    ]
    handlers = {HTTPException: http_error, Exception: crash}
    return _ConnectionDropper(Starlette(routes=routes, exception_handlers=handlers))


class _ConnectionDropper:
    """The outermost ASGI layer: turns ``DropConnection`` into a closed socket.

    uvicorn answers 500 to an app that fails before it starts a response, so the socket is
    closed here, through the transport of uvicorn's request cycle (the owner of ``send``),
    before uvicorn sees anything; then it waits for uvicorn to notice the disconnect, after
    which uvicorn sends nothing and logs nothing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        try:
            await self.app(scope, receive, send)
        except DropConnection:
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is None:  # not uvicorn's cycle: let the server treat it as a crash
                raise
            transport.close()
            while (await receive())["type"] != "http.disconnect":
                pass


async def _put_endpoint(state: SimulatorState, request: Request) -> Response:
    name = request.path_params["name"]
    try:
        check_endpoint_name(name)
        raw = await request.body()
        profile = EndpointProfile.model_validate_json(raw or b"{}")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return _error_response(WIRES["openai"], BadRequest(str(exc)).problem())
    state.set_profile(name, profile)
    url = base_url(str(request.base_url), name, profile.protocol)
    shown = profile.model_dump(exclude={"api_key"}) | {"api_key_set": profile.api_key is not None}
    return json_response({"name": name, "base_url": url, "profile": shown})


# -- one chat request ----------------------------------------------------------------------


async def _chat(state: SimulatorState, request: Request, path: str) -> Response:
    received_at = time.time()
    name = request.path_params["endpoint"]
    profile = state.profile(name)
    wire = WIRES[profile.protocol] if profile is not None else _ROUTE_WIRES[path]
    if profile is None or wire.path != path:
        return _error_response(wire, _not_found(request))
    raw = await request.body()
    call: ChatCall | None = None
    problem: Problem | None = None
    try:
        call = wire.parse(raw)
    except BadRequest as exc:
        problem = exc.problem()
    if profile.api_key is not None:  # the API checks the key before it reads the body
        problem = key_problem(profile, wire.presented_key(request.headers)) or problem
    exchange = _Exchange(state, name, profile, wire, raw, received_at)
    if problem is not None or call is None:
        admission = state.admit(name, 0, consume=False)
        return exchange.error(call, problem or Problem("server_error"), admission)
    return await exchange.serve(call, request)


class _Exchange:
    """One admitted-or-refused chat request: what it needs to answer and to be logged."""

    __slots__ = ("name", "profile", "raw", "received_at", "state", "wire")

    def __init__(
        self,
        state: SimulatorState,
        name: str,
        profile: EndpointProfile,
        wire: Wire,
        raw: bytes,
        received_at: float,
    ) -> None:
        self.state, self.name, self.profile, self.wire = state, name, profile, wire
        self.raw, self.received_at = raw, received_at

    async def serve(self, call: ChatCall, request: Request) -> Response:
        admission = self.state.admit(self.name, call.cost)
        if admission.retry_after_s is not None:
            return self.error(call, quota_problem(call, admission), admission)
        draws = draw(self.state, self.name, self.profile, self.raw)
        rng, digest, invalid_draw = draws.rng, draws.digest, draws.invalid_draw
        if draws.latency_ms > 0:
            await asyncio.sleep(draws.latency_ms / 1000)
        if self.state.holding:  # a test holds answers (``SimulatorState.hold``)
            while self.state.holding:
                await asyncio.sleep(0.005)
            if self.state.drop_held:
                self._log(call, NO_RESPONSE, "dropped")
                raise DropConnection
        fault = choose_fault(self.profile, draws.nth_request, draws.fault_draw)
        if call.response_format in self.profile.refuse_response_formats:
            return self.error(call, format_problem(call), admission, digest)
        if fault in ERROR_FAULTS:
            presented = self.wire.presented_key(request.headers)
            problem = injected_problem(fault, call, self.profile, presented)
            return self.error(call, problem, admission, digest)
        if fault == "dropped":
            self._log(call, NO_RESPONSE, fault)
            raise DropConnection
        if fault == "timeout":
            return await self._hang(call, request, admission, digest, invalid_draw, rng)
        invalid = fault == "invalid" or self._invalid_by_profile(call, fault, invalid_draw)
        return self.answer(call, fault, invalid, admission, digest, rng)

    def answer(
        self,
        call: ChatCall,
        fault: Fault,
        invalid: bool,
        admission: Admission,
        digest: str,
        rng: random.Random,
        ticket: tuple[int, int] | None = None,
    ) -> Response:
        generated = generate(call, fault, invalid, rng)
        if isinstance(generated, Problem):
            return self.error(call, generated, admission, digest)
        answer, fault = generated
        self._log(call, 200, fault, answer.completion_tokens, ticket)
        headers = self.wire.headers(digest, admission.quota, None)
        return json_response(self.wire.success(call, answer, digest), 200, headers)

    def error(
        self,
        call: ChatCall | None,
        problem: Problem,
        admission: Admission,
        digest: str | None = None,
    ) -> Response:
        status, body = self.wire.error(problem)
        retry_after = problem.retry_after_s if problem.kind == "rate_limited" else None
        headers = self.wire.headers(digest or os.urandom(32).hex(), admission.quota, retry_after)
        self._log(call, status, FAULT_OF[problem.kind])
        return json_response(body, status, headers)

    async def _hang(
        self,
        call: ChatCall,
        request: Request,
        admission: Admission,
        digest: str,
        invalid_draw: float,
        rng: random.Random,
    ) -> Response:
        """Hold the request ``hang_s`` (less if the client leaves), then answer after all."""
        ticket = self._log(call, NO_RESPONSE, "timeout")
        if await _client_leaves_within(request, self.profile.hang_s):
            return Response(status_code=204)  # nobody is listening; uvicorn discards it
        invalid = self._invalid_by_profile(call, "timeout", invalid_draw)
        return self.answer(call, "timeout", invalid, admission, digest, rng, ticket)

    def _invalid_by_profile(self, call: ChatCall, fault: Fault, draw: float) -> bool:
        return invalid_by_profile(self.state, self.name, self.profile, call, fault, draw)

    def _log(
        self,
        call: ChatCall | None,
        status: int,
        fault: Fault,
        completion: int = 0,
        ticket: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """Log the request (or, with a ``ticket``, replace what was logged for it)."""
        record = record_of(self.name, call, self.raw, self.received_at, status, fault, completion)
        if ticket is not None:
            self.state.amend(ticket, record)
            return ticket
        return self.state.record(record)


def _not_found(request: Request) -> Problem:
    return Problem("not_found", f"Invalid URL ({request.method} {request.url.path})")


def _error_response(wire: Wire, problem: Problem, status_override: int | None = None) -> Response:
    status, body = wire.error(problem)
    headers = wire.headers(os.urandom(32).hex(), None, None)
    return json_response(body, status_override or status, headers)


async def _client_leaves_within(request: Request, seconds: float) -> bool:
    """Whether the client disconnects within ``seconds`` (its body was already read)."""
    try:
        async with asyncio.timeout(seconds):
            while (await request.receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True
