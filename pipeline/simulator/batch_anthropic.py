"""Anthropic's Message Batches API on every ``anthropic`` endpoint of the simulator.

Routes (under ``/{endpoint}``, the SDK's ``base_url``)::

    POST   /v1/messages/batches                    {requests: [{custom_id, params}]}
    GET    /v1/messages/batches[?limit&before_id&after_id]   newest first, a cursor page
    GET    /v1/messages/batches/{batch_id}         MessageBatch
    POST   /v1/messages/batches/{batch_id}/cancel  MessageBatch, ``canceling``
    GET    /v1/messages/batches/{batch_id}/results JSONL of MessageBatchIndividualResponse
    DELETE /v1/messages/batches/{batch_id}         DeletedMessageBatch (an ended batch only)

Through the official SDK, as a test does::

    client = anthropic.Anthropic(base_url=sim.add_endpoint("claude", EndpointProfile(
        protocol="anthropic", batch_turnaround_s=1.0)), api_key="sk-ant-sim")
    batch = client.messages.batches.create(requests=[{"custom_id": "a", "params": {...}}])
    ...                                           # later: processing_status "ended"
    [r.result.type for r in client.messages.batches.results(batch.id)]   # ['succeeded']

A batch lives on the clock as OpenAI's jobs do (``batch_jobs.BatchJob``: the endpoint's
``batch_turnaround_s``, a cancel, ``batch_expire_after_s``), read as Anthropic's
``processing_status``: ``in_progress`` until it ends, ``canceling`` from a cancel, then
``ended``. As the API says, ``request_counts`` has every request ``processing`` until the
batch ends, then each ``succeeded``, ``errored``, ``canceled`` or ``expired``. A batch
advances only when it is read; its due lines are answered by ``batch_lines.answer_line``
(the anthropic wire: what the messages route would answer, with the profile's faults, logged
with the batch's id). ``params`` are checked only then, as the API does: a bad one is an
``errored`` result, not a refused batch. The batch itself is refused (400, Anthropic's error
shape) for a bad ``custom_id`` (``^[a-zA-Z0-9_-]{1,64}$``, unique), no requests or more than
100,000, and with a 413 over 256 MB; the key is checked as on the messages route.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import batch_jobs
from .batch_http import Handler, error_body, guarded, json_body
from .batch_jobs import BatchJob, BatchStore, InputLine, new_id
from .batch_lines import answer_line
from .protocols import WIRES, ProtocolName
from .state import SimulatorState
from .wire import BadRequest, Problem

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "batch_routes"]

_WIRE = WIRES["anthropic"]
_PROTOCOLS: tuple[ProtocolName, ...] = ("anthropic",)
#: The API's limits of one batch: requests, and bytes of the create request.
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_CUSTOM_ID_RULE = "^[a-zA-Z0-9_-]{1,64}$"
_WINDOW_S = 24 * 3600.0
#: ``processing_status`` by the job's (OpenAI) status; any other is ``in_progress``.
_PROCESSING = {
    "cancelling": "canceling",
    "completed": "ended",
    "expired": "ended",
    "cancelled": "ended",
}
#: What the requests a batch never ran became, by how it ended.
_NOT_RUN = {"cancelled": "canceled", "expired": "expired"}
#: The error type of a line that got no HTTP answer, by ``answer_line``'s error code.
_NO_ANSWER_TYPE = {"request_timeout": "timeout_error"}


def batch_routes(state: SimulatorState) -> list[Route]:
    """The Message Batches routes over ``state``, with their own store of batches."""
    api = _BatchAPI(state, BatchStore())
    root = "/v1/messages/batches"
    spec = (
        (root, "POST", api.create),
        (root, "GET", api.list_batches),
        (root + "/{batch_id}", "GET", api.retrieve),
        (root + "/{batch_id}", "DELETE", api.delete),
        (root + "/{batch_id}/cancel", "POST", api.cancel),
        (root + "/{batch_id}/results", "GET", api.results),
    )
    return [Route("/{endpoint}" + path, api.guarded(h), methods=[m]) for path, m, h in spec]


class _BatchAPI:
    def __init__(self, state: SimulatorState, store: BatchStore) -> None:
        self.state, self.store = state, store

    def guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return guarded(self.state, handler, _PROTOCOLS)

    async def create(self, request: Request, name: str) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BYTES:
            message = f"Request exceeds the maximum size of a batch ({MAX_BYTES:,} bytes)."
            error = {"type": "request_too_large", "message": message}
            return _json({"type": "error", "error": error}, 413)
        profile = self.state.profile(name)
        assert profile is not None  # guarded
        now = self.state.now()
        job = BatchJob(
            new_id("msgbatch_01", 24), name, "", None, None, _requests(raw), [],
            created=now, created_unix=time.time(), turnaround_s=profile.batch_turnaround_s,
            expire_after_s=profile.batch_expire_after_s,
        )  # fmt: skip  # an Anthropic batch has no input file, metadata or single model
        self.store.add_job(job)
        return _json(self._batch(request, job, now))

    async def retrieve(self, request: Request, name: str) -> Response:
        job, now = self._read(request, name)
        return _json(self._batch(request, job, now)) if job else _no_batch(request)

    async def list_batches(self, request: Request, name: str) -> Response:
        query = request.query_params
        limit = _limit(query.get("limit"))
        page, has_more = _page(self.store.jobs(name), limit, query.get("before_id"),
                               query.get("after_id"))  # fmt: skip
        now = self.state.now()
        for job in page:
            self._advance(job, now)
        data = [self._batch(request, job, now) for job in page]
        first, last = (page[0].id, page[-1].id) if page else (None, None)
        return _json({"data": data, "has_more": has_more, "first_id": first, "last_id": last})

    async def cancel(self, request: Request, name: str) -> Response:
        job, now = self._read(request, name)
        if job is None:
            return _no_batch(request)
        if _status(job, now) == "ended":
            raise BadRequest(f"Batch {job.id} has already ended and cannot be canceled.")
        if job.cancel_at is None:
            job.cancel_at = now
        return _json(self._batch(request, job, now))

    async def results(self, request: Request, name: str) -> Response:
        job, now = self._read(request, name)
        if job is None:
            return _no_batch(request)
        if _status(job, now) != "ended":
            raise BadRequest(f"Batch {job.id} is still processing; its results are not ready.")
        content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _results(job, now))
        headers = _WIRE.headers(os.urandom(32).hex(), None, None)
        return Response(content.encode(), 200, headers, media_type="application/binary")

    async def delete(self, request: Request, name: str) -> Response:
        job, now = self._read(request, name)
        if job is None:
            return _no_batch(request)
        if _status(job, now) != "ended":
            raise BadRequest(
                f"Batch {job.id} cannot be deleted while it is processing; cancel it first."
            )
        self.store.delete_job(name, job.id)
        return _json({"id": job.id, "type": "message_batch_deleted"})

    def _read(self, request: Request, name: str) -> tuple[BatchJob | None, float]:
        """The batch the path names, advanced to now (None if the endpoint has none)."""
        job, now = self.store.job(name, request.path_params["batch_id"]), self.state.now()
        if job is not None:
            self._advance(job, now)
        return job, now

    def _advance(self, job: BatchJob, now: float) -> None:
        """Answer (and log) the lines done by ``now``."""
        for line in job.lines[len(job.results) : job.due(now)]:
            job.results.append(answer_line(self.state, job.endpoint, line, job.id))

    def _batch(self, request: Request, job: BatchJob, now: float) -> dict[str, Any]:
        """Anthropic's ``MessageBatch`` as of ``now``; its results URL is on this server."""
        events = job.events(now)
        status = _status(job, now)
        ended = next((events[k] for k in ("completed_at", "expired_at", "cancelled_at")
                      if k in events), None)  # fmt: skip
        cancel = events.get("cancelling_at")
        expires = job.expire_after_s if job.expire_after_s is not None else _WINDOW_S
        url = f"{request.base_url}{job.endpoint}/v1/messages/batches/{job.id}/results"
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": _counts(job, now),
            "created_at": _time(job, job.created),
            "expires_at": _time(job, job.created + expires),
            "ended_at": _time(job, ended) if ended is not None else None,
            "cancel_initiated_at": _time(job, cancel) if cancel is not None else None,
            "archived_at": None,
            "results_url": url if status == "ended" else None,
        }


def _requests(raw: bytes) -> list[InputLine]:
    """The batch's requests, each ``params`` kept as the body its messages call would get."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("There was an error parsing the body of your request.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body of your request must be a JSON object.")
    _no_extra(body, {"requests"}, "")
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise BadRequest("requests: Field required" if requests is None else
                         "requests: Input should be a valid list")  # fmt: skip
    if not 1 <= len(requests) <= MAX_REQUESTS:
        raise BadRequest(f"requests: a batch holds 1 to {MAX_REQUESTS:,} requests, "
                         f"not {len(requests):,}")  # fmt: skip
    lines, seen = [], set()
    for i, item in enumerate(requests):
        line = _request(item, f"requests.{i}")
        if line.custom_id in seen:
            raise BadRequest(f"requests.{i}.custom_id: duplicate custom_id {line.custom_id!r}; "
                             "each request of a batch needs its own")  # fmt: skip
        seen.add(line.custom_id)
        lines.append(line)
    return lines


def _request(item: Any, where: str) -> InputLine:
    if not isinstance(item, dict):
        raise BadRequest(f"{where}: Input should be a valid dictionary")
    _no_extra(item, {"custom_id", "params"}, where + ".")
    custom_id, params = item.get("custom_id"), item.get("params")
    if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
        raise BadRequest(f"{where}.custom_id: String should match pattern '{_CUSTOM_ID_RULE}'")
    if not isinstance(params, dict):
        raise BadRequest(f"{where}.params: Input should be a valid dictionary")
    return InputLine(custom_id, json.dumps(params, ensure_ascii=False).encode())


def _no_extra(value: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(value) - allowed)
    if extra:
        raise BadRequest(f"{where}{extra[0]}: Extra inputs are not permitted")


def _status(job: BatchJob, now: float) -> str:
    return _PROCESSING.get(job.status(now), "in_progress")


def _counts(job: BatchJob, now: float) -> dict[str, int]:
    """Every request ``processing`` until the batch ends; then how each ended."""
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if _status(job, now) != "ended":
        return counts | {"processing": len(job.lines)}
    for result in _results(job, now):
        counts[result["result"]["type"]] += 1
    return counts


def _results(job: BatchJob, now: float) -> list[dict[str, Any]]:
    """The ``MessageBatchIndividualResponse`` of each request of an ended batch."""
    answered = [_result(r) for r in job.results]
    not_run = _NOT_RUN.get(job.status(now))
    if not_run is not None:
        answered += [{"custom_id": line.custom_id, "result": {"type": not_run}}
                     for line in job.lines[len(job.results) :]]  # fmt: skip
    return answered


def _result(answered: batch_jobs.LineResult) -> dict[str, Any]:
    """A line as ``answer_line`` wrote it (an OpenAI-style output line) as Anthropic's
    result: the 200's ``Message``, or the error body the messages route would have sent."""
    line = answered.line
    custom_id, response = line["custom_id"], line["response"]
    if response is None:  # no HTTP answer: a timeout, a dropped connection
        kind = _NO_ANSWER_TYPE.get(line["error"]["code"], "api_error")
        error = {"type": "error", "error": {"type": kind, "message": line["error"]["message"]}}
        return {"custom_id": custom_id, "result": {"type": "errored", "error": error}}
    if answered.ok:
        message = response["body"]
        usage = message["usage"] | {"service_tier": "batch"}  # billed at the batch price
        result = {"type": "succeeded", "message": message | {"usage": usage}}
    else:
        error = response["body"] | {"request_id": response["request_id"]}
        result = {"type": "errored", "error": error}
    return {"custom_id": custom_id, "result": result}


def _page(
    jobs: list[BatchJob], limit: int, before_id: str | None, after_id: str | None
) -> tuple[list[BatchJob], bool]:
    """A page of ``jobs`` (newest first) next to a cursor, and whether more lie beyond it."""
    if before_id is not None and after_id is not None:
        raise BadRequest("before_id and after_id cannot both be given")
    ids = [job.id for job in jobs]
    if after_id is not None:
        rest = jobs[ids.index(after_id) + 1 :] if after_id in ids else []
        return rest[:limit], len(rest) > limit
    if before_id is not None:
        rest = jobs[: ids.index(before_id)] if before_id in ids else []
        return rest[-limit:], len(rest) > limit
    return jobs[:limit], len(jobs) > limit


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise BadRequest(f"limit: Input should be an integer from 1 to 1000, not {value!r}")
    return int(value)


def _time(job: BatchJob, at: float) -> str:
    """A clock time as the API's RFC 3339 timestamp (microseconds, UTC)."""
    start = datetime.fromtimestamp(job.created_unix, UTC)
    return (start + timedelta(seconds=at - job.created)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(body: Any, status: int = 200) -> Response:
    return json_body(body, status, wire=_WIRE)


def _error(problem: Problem) -> Response:
    return error_body(problem, _WIRE)


def _no_batch(request: Request) -> Response:
    batch_id = request.path_params["batch_id"]
    return _error(Problem("not_found", f"No message batch found with id '{batch_id}'."))
