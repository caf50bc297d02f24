"""The lines of an OpenAI batch: reading the input file, and answering one line.

An input file is JSONL, each line ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}`` with unique ``custom_id``s and one ``model``;
what breaks that fails the whole batch with OpenAI's ``BatchError``s:

    >>> lines, errors, model = read_input(b'{"custom_id": "a", "method": "POST", '
    ...     b'"url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}\\n')
    >>> [line.custom_id for line in lines], errors, model
    (['a'], [], 'm')
    >>> read_input(b'not json\\n')[1][0]["code"]
    'invalid_json_line'

A line is answered as the same body sent alone to the endpoint's chat route would be (the
wire's parsing, the profile's fault draws, ``answers``), and logged with the batch's id.
An answer is an output-file line; an error answer (a 400, or an injected 429 / 500 /
overloaded) an error-file line carrying the status and body the route would have sent; a
timeout or dropped connection an error-file line with no response, as is every line a
cancel or the expiry left undone (``stopped_line``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pipeline.sim_profiles import NO_RESPONSE, Fault

from .batch_jobs import CHAT_COMPLETIONS, InputLine, LineResult
from .exchange import draw, generate, invalid_by_profile, record_of
from .faults import ERROR_FAULTS, FAULT_OF, choose_fault, format_problem, injected_problem
from .protocols import WIRES
from .state import SimulatorState
from .wire import BadRequest, ChatCall, Problem, Wire, digest_of

__all__ = ["MAX_REQUESTS", "answer_line", "read_input", "stopped_line"]

#: The API's limit of requests in one batch.
MAX_REQUESTS = 50_000
#: Why an undone line failed, by how its job stopped, as the error file says it.
_STOPPED = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}
#: What an unanswered line (no HTTP response) says in the error file.
_NO_ANSWER: dict[Fault, tuple[str, str]] = {
    "timeout": ("request_timeout", "The request timed out before the model answered."),
    "dropped": ("server_error", "The connection was closed before the model answered."),
}


def read_input(content: bytes) -> tuple[list[InputLine], list[dict[str, Any]], str | None]:
    """(lines, the errors that fail the batch, the model) of an input file."""
    lines: list[InputLine] = []
    errors: list[dict[str, Any]] = []
    models: set[str] = set()
    seen: set[str] = set()
    for number, text in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line, model = _read_line(text, seen)
        except BadRequest as exc:
            errors.append(_error(exc.code or "invalid_request", exc.message, exc.param, number))
            continue
        if models and model not in models:
            message = "The provided model differs from other requests in the batch; a batch "
            errors.append(
                _error("mismatched_model", message + "uses one model.", "body.model", number)
            )
        models.add(model)
        lines.append(line)
    if not lines and not errors:
        errors.append(_error("empty_file", "The batch input file is empty.", None, None))
    if len(lines) > MAX_REQUESTS:
        message = f"The batch input file has {len(lines)} requests; the limit is {MAX_REQUESTS:,}."
        errors.append(_error("too_many_requests", message, None, None))
    return lines, errors, (min(models) if len(models) == 1 else None)


def _read_line(text: str, seen: set[str]) -> tuple[InputLine, str]:
    try:
        value = json.loads(text)
    except ValueError:
        raise BadRequest(
            "This line is not parseable as valid JSON.", None, "invalid_json_line"
        ) from None
    if not isinstance(value, dict):
        raise BadRequest("This line is not a JSON object.", None, "invalid_json_line")
    custom_id, body = value.get("custom_id"), value.get("body")
    missing = [p for p in ("custom_id", "method", "url", "body") if p not in value]
    if missing:
        raise BadRequest(
            f"Missing required parameter: '{missing[0]}'.", missing[0], "missing_required_parameter"
        )
    if not isinstance(custom_id, str) or not custom_id:
        raise BadRequest("'custom_id' must be a non-empty string.", "custom_id", "invalid_type")
    if not isinstance(body, dict):
        raise BadRequest("'body' must be a JSON object.", "body", "invalid_type")
    if value["method"] != "POST":
        raise BadRequest("The method of every request must be 'POST'.", "method", "invalid_value")
    if value["url"] != CHAT_COMPLETIONS:
        message = "The URL provided for this request does not prefix-match the batch endpoint."
        raise BadRequest(message, "url", "invalid_url")
    if custom_id in seen:
        message = ("The custom_id for this request is a duplicate of another request. The "
                   "custom_id parameter must be unique for each request in a batch.")  # fmt: skip
        raise BadRequest(message, "custom_id", "duplicate_custom_id")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(
            "Missing required parameter: 'body.model'.", "body.model", "missing_required_parameter"
        )
    seen.add(custom_id)
    return InputLine(custom_id, json.dumps(body, ensure_ascii=False).encode()), model


def _error(code: str, message: str, param: str | None, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def answer_line(state: SimulatorState, name: str, line: InputLine, batch_id: str) -> LineResult:
    """Answer one line as endpoint ``name``'s chat route would, and log it."""
    profile = state.profile(name)
    assert profile is not None  # jobs exist only under registered endpoints
    wire = WIRES[profile.protocol]
    received_at = time.time()
    answered = _Answered(state, name, wire, line, batch_id, received_at)
    try:
        call = wire.parse(line.body)
    except BadRequest as exc:
        return answered.error(None, exc.problem(), digest_of(f"{batch_id}|{line.custom_id}"))
    draws = draw(state, name, profile, line.body)
    fault = choose_fault(profile, draws.nth_request, draws.fault_draw)
    if call.response_format in profile.refuse_response_formats:
        return answered.error(call, format_problem(call), draws.digest)
    if fault in ERROR_FAULTS:
        return answered.error(call, injected_problem(fault, call, profile, ""), draws.digest)
    if fault in _NO_ANSWER:
        state.record(record_of(name, call, line.body, received_at, NO_RESPONSE, fault, 0, batch_id))
        code, message = _NO_ANSWER[fault]
        return LineResult(
            _line(line, draws.digest, None, {"code": code, "message": message}), False
        )
    invalid = fault == "invalid" or invalid_by_profile(
        state, name, profile, call, fault, draws.invalid_draw
    )
    generated = generate(call, fault, invalid, draws.rng)
    if isinstance(generated, Problem):
        return answered.error(call, generated, draws.digest)
    answer, fault = generated
    record = record_of(
        name, call, line.body, received_at, 200, fault, answer.completion_tokens, batch_id
    )
    state.record(record)
    response = _response(wire, draws.digest, 200, wire.success(call, answer, draws.digest))
    line_out = _line(line, draws.digest, response, None)
    return LineResult(line_out, True, call.prompt_tokens, answer.completion_tokens)


class _Answered:
    """What an error answer of one line needs to be written and logged."""

    __slots__ = ("batch_id", "line", "name", "received_at", "state", "wire")

    def __init__(
        self,
        state: SimulatorState,
        name: str,
        wire: Wire,
        line: InputLine,
        batch_id: str,
        received_at: float,
    ) -> None:
        self.state, self.name, self.wire, self.line = state, name, wire, line
        self.batch_id, self.received_at = batch_id, received_at

    def error(self, call: ChatCall | None, problem: Problem, digest: str) -> LineResult:
        status, body = self.wire.error(problem)
        fault = FAULT_OF[problem.kind]
        raw = self.line.body
        self.state.record(
            record_of(self.name, call, raw, self.received_at, status, fault, 0, self.batch_id)
        )
        response = _response(self.wire, digest, status, body)
        return LineResult(_line(self.line, digest, response, None), False)


def stopped_line(line: InputLine, batch_id: str, code: str) -> dict[str, Any]:
    """The error-file line of a request its job never ran: ``batch_expired`` or
    ``batch_cancelled``."""
    digest = digest_of(f"{batch_id}|{line.custom_id}")
    return _line(line, digest, None, {"code": code, "message": _STOPPED[code]})


def _response(wire: Wire, digest: str, status: int, body: Any) -> dict[str, Any]:
    request_id = wire.headers(digest, None, None).get("x-request-id", "req_" + digest[:32])
    return {"status_code": status, "request_id": request_id, "body": body}


def _line(
    line: InputLine, digest: str, response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": "batch_req_" + digest[:32],
        "custom_id": line.custom_id,
        "response": response,
        "error": error,
    }
