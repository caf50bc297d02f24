"""The simulator's ASGI app: routes, and the decision of what each request gets.

Routes::

    POST /{endpoint}/v1/chat/completions   the OpenAI chat-completions protocol
    PUT  /_sim/endpoints/{name}            register or replace a profile (JSON body)
    GET  /_sim/requests[?endpoint=name]    the request log, as JSON
    GET  /_sim/health                      {"status": "ok", "endpoints": [...]}

One chat request, in order: unknown endpoint → 404; wrong key → 401; malformed body → 400
(none of these draws or sleeps); then a ``random.Random`` seeded with
``(profile.seed, endpoint, sha256(body), n-th time this body came)`` draws the latency
(slept with ``asyncio.sleep``) and the fault: 500 for the first ``fail_first`` requests,
else 429 with share ``rate_429``, 500 with share ``rate_500``, else 200. A 200 answer is
schema-invalid for the first ``invalid_first`` answers or with share ``invalid_rate``,
and cut with ``finish_reason: "length"`` when it exceeds the request's max tokens.
A retried identical body has a new draw, so it can succeed, and the run stays reproducible.

    >>> app = build_app(SimulatorState())
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import tokens, wire
from .hints import hints_for
from .profiles import EndpointProfile, Fault, RequestRecord, check_endpoint_name
from .schema_gen import SchemaError
from .state import SimulatorState


@dataclass(frozen=True, slots=True)
class _Reply:
    """What to send and what to log."""

    status: int
    body: dict[str, Any]
    fault: Fault
    headers: dict[str, str] | None = None
    completion_tokens: int = 0
    request_id: str | None = None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Compact UTF-8 JSON with ``content-type: application/json``, as the API sends."""
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, status, headers, media_type="application/json")


def build_app(state: SimulatorState) -> Starlette:
    """The Starlette app serving ``state``'s endpoints."""

    async def chat(request: Request) -> Response:
        return await _chat(state, request)

    async def put_endpoint(request: Request) -> Response:
        return await _put_endpoint(state, request)

    async def list_requests(request: Request) -> Response:
        endpoint = request.query_params.get("endpoint")
        return json_response([r.to_dict() for r in state.records(endpoint)])

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "endpoints": state.endpoint_names()})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return json_response(wire.not_found_body(request.method, request.url.path), status)

    async def crash(request: Request, exc: Exception) -> Response:
        # A simulator bug still answers in the API's shape; uvicorn logs the traceback.
        return json_response(wire.server_error_body(), 500)

    routes = [
        Route("/{endpoint}/v1/chat/completions", chat, methods=["POST"]),
        Route("/_sim/endpoints/{name}", put_endpoint, methods=["PUT"]),
        Route("/_sim/requests", list_requests, methods=["GET"]),
        Route("/_sim/health", health, methods=["GET"]),
    ]
    handlers = {HTTPException: http_error, Exception: crash}
    return Starlette(routes=routes, exception_handlers=handlers)


async def _put_endpoint(state: SimulatorState, request: Request) -> Response:
    name = request.path_params["name"]
    try:
        check_endpoint_name(name)
        raw = await request.body()
        profile = EndpointProfile.model_validate_json(raw or b"{}")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return json_response(wire.error_body(str(exc), "invalid_request_error"), 400)
    state.set_profile(name, profile)
    base_url = f"{str(request.base_url).rstrip('/')}/{name}/v1"
    shown = profile.model_dump(exclude={"api_key"}) | {"api_key_set": profile.api_key is not None}
    return json_response({"name": name, "base_url": base_url, "profile": shown})


async def _chat(state: SimulatorState, request: Request) -> Response:
    started, received_at = time.perf_counter(), time.time()
    name = request.path_params["endpoint"]
    profile = state.profile(name)
    if profile is None:
        body = wire.error_body(
            f"Unknown simulator endpoint {name!r} ({request.method} {request.url.path})",
            "invalid_request_error",
        )
        return json_response(body, 404)
    raw = await request.body()
    try:
        call: wire.ChatCall | None = wire.parse_chat_request(raw)
        refusal = None
    except wire.BadRequest as exc:
        call, refusal = None, _Reply(400, exc.body(), "bad_request")
    if profile.api_key is not None:  # the API checks the key before it reads the body
        refusal = _check_key(profile, request.headers.get("authorization")) or refusal
    if refusal is not None or call is None:
        reply = refusal or _Reply(500, wire.server_error_body(), "server_error")
    else:
        reply = await _answer(state, name, profile, call, hashlib.sha256(raw).hexdigest())
    state.record(_record(name, raw, call, reply, received_at))
    elapsed_ms = round((time.perf_counter() - started) * 1000)
    request_id = reply.request_id or f"req_{uuid.uuid4().hex}"
    headers = {"x-request-id": request_id, "openai-processing-ms": str(elapsed_ms)}
    return json_response(reply.body, reply.status, {**headers, **(reply.headers or {})})


def _check_key(profile: EndpointProfile, authorization: str | None) -> _Reply | None:
    """A 401 reply unless ``Authorization`` carries the profile's key."""
    presented = authorization or ""
    if presented[:7].lower() == "bearer ":
        presented = presented[7:].strip()
    expected = profile.api_key or ""
    if hmac.compare_digest(presented.encode(), expected.encode()):
        return None
    body = wire.auth_error_body(presented, echo_key=profile.echo_key_in_errors)
    return _Reply(401, body, "auth")


async def _answer(
    state: SimulatorState,
    name: str,
    profile: EndpointProfile,
    call: wire.ChatCall,
    body_sha256: str,
) -> _Reply:
    arrival = state.arrive(name, body_sha256)
    draw_key = f"{profile.seed}|{name}|{body_sha256}|{arrival.nth_body}"
    completion_id, request_id = wire.request_ids(draw_key)
    rng = random.Random(draw_key)
    latency_ms, fault_draw, invalid_draw = (
        rng.uniform(*profile.latency_ms),
        rng.random(),
        rng.random(),
    )
    if latency_ms > 0:
        await asyncio.sleep(latency_ms / 1000)
    if arrival.nth_request < profile.fail_first or (
        profile.rate_429 <= fault_draw < profile.rate_429 + profile.rate_500
    ):
        return _Reply(500, wire.server_error_body(), "server_error", request_id=request_id)
    if fault_draw < profile.rate_429:
        body = wire.rate_limit_body(call.model, profile.retry_after_s)
        headers = wire.retry_after_headers(profile.retry_after_s)
        return _Reply(429, body, "rate_limited", headers, request_id=request_id)
    nth_answer = state.next_answer(name)
    invalid = call.schema is not None and (
        nth_answer < profile.invalid_first or invalid_draw < profile.invalid_rate
    )
    reply = _completion(call, completion_id, invalid, rng)
    return dataclasses.replace(reply, request_id=request_id)


def _completion(
    call: wire.ChatCall, completion_id: str, invalid: bool, rng: random.Random
) -> _Reply:
    try:
        content = answer_text(call, invalid, rng)
    except SchemaError as exc:
        body = wire.BadRequest(
            f"Invalid schema for response_format: {exc}", "response_format"
        ).body()
        return _Reply(400, body, "bad_request")
    finish_reason = "stop"
    if call.max_tokens is not None and tokens.completion_tokens(content) > call.max_tokens:
        content, finish_reason = content[: tokens.chars_for_tokens(call.max_tokens)], "length"
    used = tokens.completion_tokens(content)
    body = wire.completion_body(
        call, completion_id, content, finish_reason, (call.prompt_tokens, used)
    )
    fault: Fault = "truncated" if finish_reason == "length" else "invalid" if invalid else "none"
    return _Reply(200, body, fault, completion_tokens=used)


def answer_text(call: wire.ChatCall, invalid: bool, rng: random.Random) -> str:
    """The assistant's content: JSON fitting (or, if ``invalid``, breaking) the schema; or prose."""
    text = call.first_user_text
    if call.schema is not None:
        value = call.schema.invalid_instance(text, rng) if invalid else call.schema.instance(text)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if call.json_mode:
        return json.dumps({"summary": plain_answer(text)}, ensure_ascii=False)
    return plain_answer(text)


def plain_answer(text: str, sentences: int = 3) -> str:
    """The first ``sentences`` sentences of ``text``: the simulator's prose answer.

    >>> plain_answer("One. Two! Three? Four.", 2)
    'One. Two!'
    """
    found = hints_for(text).sentences
    return " ".join(found[:sentences]) if found else "No text was provided."


def _record(
    name: str, raw: bytes, call: wire.ChatCall | None, reply: _Reply, received_at: float
) -> RequestRecord:
    if call is not None:
        model, text = call.model, call.first_user_text
    else:
        model, text = wire.partial_call_fields(raw)
    return RequestRecord(
        endpoint=name,
        model=model,
        received_at=received_at,
        status=reply.status,
        fault=reply.fault,
        prompt_tokens=call.prompt_tokens if call else 0,
        completion_tokens=reply.completion_tokens,
        prompt_sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        is_repair=call.is_repair if call else False,
    )
