"""What the simulator's batch APIs share over HTTP: the endpoint and key checks, and bodies.

    route = guarded(state, handler, frozenset({"anthropic"}))   # a Starlette endpoint
    json_body({"id": "msgbatch_1"}, wire=WIRES["anthropic"])    # with the wire's headers

``guarded`` answers 404 (in the wire's error shape) for an endpoint that is unknown or
speaks another protocol, checks the key as the chat route does, and turns a handler's
``BadRequest`` (400) or ``NotFound`` (404) into the wire's error body.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .faults import key_problem
from .protocols import WIRES, ProtocolName
from .state import SimulatorState
from .wire import BadRequest, Problem, Wire

__all__ = ["Handler", "NotFound", "error_body", "guarded", "json_body", "json_object"]

Handler = Callable[[Request, str], Awaitable[Response]]


class NotFound(Exception):
    """An id this endpoint does not know: a 404 saying so."""


def guarded(
    state: SimulatorState, handler: Handler, protocols: Collection[ProtocolName]
) -> Callable[[Request], Awaitable[Response]]:
    """``handler(request, endpoint_name)`` behind the endpoint (one of ``protocols``) and
    key checks; its 400s and 404s as answers in the endpoint's own error shape."""

    async def route(request: Request) -> Response:
        name = request.path_params["endpoint"]
        profile = state.profile(name)
        if profile is None or profile.protocol not in protocols:
            wire = WIRES[next(iter(protocols))]
            path = request.url.path
            return error_body(Problem("not_found", f"Invalid URL ({request.method} {path})"), wire)
        wire = WIRES[profile.protocol]
        if profile.api_key is not None:
            problem = key_problem(profile, wire.presented_key(request.headers))
            if problem is not None:
                return error_body(problem, wire)
        try:
            return await handler(request, name)
        except BadRequest as exc:
            return error_body(exc.problem(), wire)
        except NotFound as exc:
            return error_body(Problem("not_found", str(exc)), wire)

    return route


def json_body(body: Any, status: int = 200, *, wire: Wire) -> Response:
    """``body`` as JSON, with the headers the wire's chat route sends."""
    headers = wire.headers(os.urandom(32).hex(), None, None)
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, status, headers, media_type="application/json")


def error_body(problem: Problem, wire: Wire) -> Response:
    """``problem`` as the wire's error response."""
    status, body = wire.error(problem)
    return json_body(body, status, wire=wire)


def json_object(raw: bytes, not_an_object: str) -> dict[str, Any]:
    """A request body as a JSON object, or ``BadRequest(not_an_object)`` in the vendor's
    words when it is not one (not JSON, or another JSON value)."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BadRequest(not_an_object)
    return body
