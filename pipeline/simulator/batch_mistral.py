"""Mistral's batch API on every ``mistral`` endpoint of the simulator.

Routes (under ``/{endpoint}``, the SDK's ``server_url``)::

    POST /v1/batch/jobs                  {input_files | requests, endpoint, model, metadata,
                                          timeout_hours} → BatchJob (QUEUED)
    GET  /v1/batch/jobs[?page&page_size&model&status&created_after&order_by&<key>=<value>]
    GET  /v1/batch/jobs/{job_id}
    POST /v1/batch/jobs/{job_id}/cancel

The files a job reads and writes are the ``/v1/files…`` routes of ``batch_openai``, which
answer a mistral endpoint with this module's ``file_object``. Through the official SDK::

    client = Mistral(api_key="k", server_url=sim.add_endpoint("eu", EndpointProfile(
        protocol="mistral", batch_turnaround_s=1.0)))
    upload = client.files.upload(file={"file_name": "in.jsonl", "content": jsonl},
                                 purpose="batch")
    job = client.batch.jobs.create(input_files=[upload.id], model="mistral-small-latest",
                                   endpoint="/v1/chat/completions", metadata={"run": "r1"})
    ...                                                   # later: status "SUCCESS"
    client.files.download(file_id=client.batch.jobs.get(job_id=job.id).output_file).read()

An input line is ``{"custom_id", "body"}``, the body a chat request whose ``model`` is the
job's. A job lives on the state's clock exactly as an OpenAI one (``batch_jobs``: QUEUED for
a tenth of ``batch_turnaround_s``, then RUNNING, SUCCESS at the end); its lines are answered
by ``batch_lines`` as the chat route would answer them and logged with the job's id. The
output file holds the 200s, the error file every other answer; lines a cancel or the timeout
(``timeout_hours``, or the profile's ``batch_expire_after_s`` if sooner) left undone are in
neither. The SDK sends a ``metadata`` filter as bare query keys (``?run=r1``): every key the
list route does not know is one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .batch_http import Handler, NotFound, error_body, guarded, json_body, json_object
from .batch_jobs import (
    CHAT_COMPLETIONS,
    TERMINAL,
    BatchJob,
    BatchStore,
    InputLine,
    StoredFile,
    store_of,
)
from .batch_jobs import LineResult as AnsweredLine
from .batch_lines import answer_line
from .protocols import WIRES, ProtocolName
from .state import SimulatorState
from .wire import BadRequest, Problem

__all__ = ["PURPOSES", "batch_routes", "file_object", "new_file_id"]

_WIRE = WIRES["mistral"]
_PROTOCOLS: tuple[ProtocolName, ...] = ("mistral",)
#: The purposes Mistral's files API takes (``FilePurpose``).
PURPOSES = frozenset(("fine-tune", "batch", "ocr", "agentic_safety"))
#: Requests one job may hold (docs.mistral.ai/capabilities/batch: "up to 1M requests").
MAX_REQUESTS = 1_000_000
#: How the simulator's statuses (``batch_jobs.Status``) read in Mistral's words.
_STATUS = {
    "validating": "QUEUED",
    "in_progress": "RUNNING",
    "finalizing": "RUNNING",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "expired": "TIMEOUT_EXCEEDED",
    "cancelling": "CANCELLATION_REQUESTED",
    "cancelled": "CANCELLED",
}
#: The event that ends a job in each terminal status (its ``completed_at``).
_ENDED_AT = {
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelled": "cancelled_at",
}
#: What each stored purpose is to Mistral: (purpose, sample_type, source).
_KIND = {
    "batch": ("batch", "batch_request", "upload"),
    "batch_result": ("batch", "batch_result", "mistral"),
    "batch_error": ("batch", "batch_error", "mistral"),
}
_CREATE_FIELDS = frozenset(
    ("input_files", "requests", "endpoint", "model", "agent_id", "metadata", "timeout_hours")
)
_LIST_PARAMS = frozenset(
    ("page", "page_size", "model", "agent_id", "created_after", "created_by_me", "status",
     "order_by")
)  # fmt: skip


def batch_routes(state: SimulatorState) -> list[Route]:
    """The batch-job routes over ``state``, on the store its files routes share."""
    api = _JobsAPI(state, store_of(state))
    spec = (
        ("/v1/batch/jobs", "POST", api.create),
        ("/v1/batch/jobs", "GET", api.list_jobs),
        ("/v1/batch/jobs/{job_id}", "GET", api.get),
        ("/v1/batch/jobs/{job_id}/cancel", "POST", api.cancel),
    )
    return [Route("/{endpoint}" + path, api.guarded(h), methods=[m]) for path, m, h in spec]


def new_file_id() -> str:
    """A file id as Mistral's are: a UUID."""
    return str(uuid.uuid4())


def file_object(stored: StoredFile, retrieved: bool = False) -> dict[str, Any]:
    """Mistral's ``CreateFileResponse`` (``GetFileResponse`` when ``retrieved``)."""
    purpose, sample_type, source = _KIND.get(stored.purpose, (stored.purpose, "instruct", "upload"))
    jsonl = stored.filename.endswith(".jsonl")
    body = {
        "id": stored.id,
        "object": "file",
        "bytes": len(stored.content),
        "created_at": stored.created_at,
        "filename": stored.filename,
        "purpose": purpose,
        "sample_type": sample_type,
        "source": source,
        "num_lines": stored.content.count(b"\n") if jsonl else None,
        "mimetype": "application/jsonl" if jsonl else "application/octet-stream",
        "signature": None,
        "expires_at": None,
        "visibility": "workspace",
    }
    return body | {"deleted": False} if retrieved else body


class _JobsAPI:
    def __init__(self, state: SimulatorState, store: BatchStore) -> None:
        self.state, self.store = state, store
        self.input_files: dict[str, list[str]] = {}  # by job id

    def guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return guarded(self.state, handler, _PROTOCOLS)

    async def create(self, request: Request, name: str) -> Response:
        body = _create_body(await request.body())
        profile = self.state.profile(name)
        assert profile is not None
        lines, errors = _read_lines(self._input_rows(name, body), body.get("model"))
        limits = (profile.batch_expire_after_s, body.get("timeout_hours", 24) * 3600.0)
        files, now = body.get("input_files") or [], self.state.now()
        job = BatchJob(
            str(uuid.uuid4()), name, files[0] if files else "", body.get("metadata"),
            body.get("model"), lines, errors, created=now, created_unix=time.time(),
            turnaround_s=profile.batch_turnaround_s,
            expire_after_s=min(s for s in limits if s is not None),
        )  # fmt: skip
        self.store.add_job(job)
        self.input_files[job.id] = list(files)
        return _json(self._job_dict(job, now))

    async def get(self, request: Request, name: str) -> Response:
        job = self._job(request, name)
        now = self.state.now()
        self._advance(job, now)
        return _json(self._job_dict(job, now))

    async def list_jobs(self, request: Request, name: str) -> Response:
        query = request.query_params
        page = _number(query.get("page"), 0, "page", 0)
        size = _number(query.get("page_size"), 100, "page_size", 1)
        now = self.state.now()
        jobs = [job for job in self.store.jobs(name) if _listed(job, query, now)]
        if query.get("order_by", "-created") == "created":
            jobs.reverse()
        shown = jobs[page * size : (page + 1) * size]
        for job in shown:
            self._advance(job, now)
        data = [self._job_dict(job, now) for job in shown]
        return _json({"object": "list", "total": len(jobs), "data": data})

    async def cancel(self, request: Request, name: str) -> Response:
        job = self._job(request, name)
        now = self.state.now()
        self._advance(job, now)
        status = job.status(now)
        if status in TERMINAL:
            raise BadRequest(f"Cannot cancel a job with status {_STATUS[status]}.", "job_id")
        if job.cancel_at is None:
            job.cancel_at = now
        return _json(self._job_dict(job, now))

    def _job(self, request: Request, name: str) -> BatchJob:
        job_id = request.path_params["job_id"]
        job = self.store.job(name, job_id)
        if job is None:
            raise NotFound(f"No batch job found with id {job_id!r}.")
        return job

    def _input_rows(self, name: str, body: dict[str, Any]) -> list[Any]:
        """The job's requests: inline ``requests``, or the lines of its ``input_files``."""
        if body.get("requests") is not None:
            return list(body["requests"])
        rows: list[Any] = []
        for file_id in body["input_files"]:
            stored = self.store.file(name, file_id)
            if stored is None or stored.purpose != "batch":
                raise NotFound(f"No batch input file with id {file_id!r}.")
            rows.extend(_rows(stored.content))
        return rows

    def _advance(self, job: BatchJob, now: float) -> None:
        """Answer the lines done by ``now``; write the files of a job that has ended."""
        for line in job.lines[len(job.results) : job.due(now)]:
            job.results.append(answer_line(self.state, job.endpoint, line, job.id))
        status = job.status(now)
        if job.finished or status not in TERMINAL or status == "failed":
            return
        ended = job.unix(now)
        outputs = [_line(r) for r in job.results if r.ok]
        errors = [_line(r) for r in job.results if not r.ok]
        if outputs:
            job.output_file_id = self._output_file(job, "batch_result", outputs, ended)
        if errors:
            job.error_file_id = self._output_file(job, "batch_error", errors, ended)
        job.finished = True

    def _output_file(self, job: BatchJob, kind: str, lines: list[dict[str, Any]], at: int) -> str:
        content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        filename = f"{job.id}_{kind}.jsonl"
        return self.store.add_file(
            job.endpoint, filename, kind, content.encode(), at, new_file_id()
        ).id

    def _job_dict(self, job: BatchJob, now: float) -> dict[str, Any]:
        """Mistral's ``BatchJob`` as of ``now``."""
        status = job.status(now)
        events = job.events(now)
        ended = events.get(_ENDED_AT.get(status, ""))
        started = events.get("in_progress_at")
        succeeded = sum(r.ok for r in job.results)
        return {
            "id": job.id,
            "object": "batch",
            "input_files": self.input_files.get(job.id, []),
            "metadata": job.metadata,
            "endpoint": CHAT_COMPLETIONS,
            "model": job.model,
            "agent_id": None,
            "output_file": job.output_file_id,
            "error_file": job.error_file_id,
            "errors": job.errors,
            "status": _STATUS[status],
            "created_at": job.unix(job.created),
            "total_requests": len(job.lines),
            "completed_requests": len(job.results),
            "succeeded_requests": succeeded,
            "failed_requests": len(job.results) - succeeded,
            "started_at": job.unix(started) if started is not None else None,
            "completed_at": job.unix(ended) if ended is not None else None,
        }


def _read_lines(rows: list[Any], model: str | None) -> tuple[list[InputLine], list[dict[str, Any]]]:
    """The job's lines, each body with the job's ``model``, and the ``BatchError``s
    (``{"message", "count"}``, one per kind of fault) that fail the job."""
    lines: list[InputLine] = []
    faults: Counter[str] = Counter()
    seen: set[str] = set()
    for row in rows:
        try:
            lines.append(_read_row(row, model, seen))
        except BadRequest as exc:
            faults[exc.message] += 1
    if not lines and not faults:
        faults["The batch has no requests."] += 1
    if len(lines) > MAX_REQUESTS:
        faults[f"A batch holds at most {MAX_REQUESTS:,} requests."] += 1
    return lines, [{"message": message, "count": n} for message, n in faults.items()]


def _rows(content: bytes) -> list[Any]:
    """The JSON values of a JSONL file; a line that is not JSON stays as its text."""
    rows: list[Any] = []
    for text in content.decode("utf-8", "replace").splitlines():
        if text.strip():
            try:
                rows.append(json.loads(text))
            except ValueError:
                rows.append(text)
    return rows


def _read_row(row: Any, model: str | None, seen: set[str]) -> InputLine:
    if not isinstance(row, dict):
        raise BadRequest("A line is not a JSON object.")
    custom_id, body = row.get("custom_id"), row.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        raise BadRequest("Every request needs a non-empty string 'custom_id'.")
    if not isinstance(body, dict):
        raise BadRequest("Every request needs a JSON object 'body'.")
    if custom_id in seen:
        raise BadRequest("The 'custom_id' of every request must be unique.")
    seen.add(custom_id)
    body = body | {"model": model} if model else body
    return InputLine(custom_id, json.dumps(body, ensure_ascii=False).encode())


def _line(result: AnsweredLine) -> dict[str, Any]:
    """An answered line as Mistral's output and error files write it."""
    line, response = result.line, result.line["response"]
    return {
        "id": line["id"].removeprefix("batch_req_"),
        "custom_id": line["custom_id"],
        "response": response and {"status_code": response["status_code"], "body": response["body"]},
        "error": line["error"],
    }


def _create_body(raw: bytes) -> dict[str, Any]:
    body = json_object(raw, "The request body is not a JSON object.")
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown:
        raise BadRequest(f"Unknown field {unknown[0]!r}.", unknown[0])
    if body.get("endpoint") != CHAT_COMPLETIONS:
        raise BadRequest(f"The simulator runs batches on {CHAT_COMPLETIONS} only, not "
                         f"{body.get('endpoint')!r}.", "endpoint")  # fmt: skip
    if body.get("agent_id") is not None:
        raise BadRequest("The simulator runs no agents; give a 'model'.", "agent_id")
    _check_inputs(body.get("input_files"), body.get("requests"))
    if not isinstance(body.get("model"), str | None):
        raise BadRequest("'model' must be a string.", "model")
    timeout = body.get("timeout_hours", 24)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1:
        raise BadRequest(f"'timeout_hours' must be a positive integer, not {timeout!r}.",
                         "timeout_hours")  # fmt: skip
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise BadRequest("'metadata' must map strings to strings.", "metadata")
    return body


def _check_inputs(files: Any, requests: Any) -> None:
    """Exactly one of a list of file ids and a list of inline requests."""
    if (files is None) == (requests is None):
        raise BadRequest("Give either 'input_files' or 'requests'.", "input_files")
    if files is not None and not (
        isinstance(files, list) and files and all(isinstance(f, str) for f in files)
    ):
        raise BadRequest("'input_files' must be a non-empty list of file ids.", "input_files")
    if requests is not None and not isinstance(requests, list):
        raise BadRequest("'requests' must be a list.", "requests")


def _listed(job: BatchJob, query: Any, now: float) -> bool:
    """Whether ``job`` passes the list route's filters (``model``, ``status``,
    ``created_after``, and every other key: a metadata value)."""
    wanted = {k: v for k, v in query.items() if k not in _LIST_PARAMS}
    if any((job.metadata or {}).get(k) != v for k, v in wanted.items()):
        return False
    if "model" in query and job.model != query["model"]:
        return False
    statuses = query.getlist("status")
    if statuses and _STATUS[job.status(now)] not in statuses:
        return False
    after = query.get("created_after")
    return after is None or job.unix(job.created) > _timestamp(after)


def _timestamp(value: str) -> float:
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise BadRequest(
            f"'created_after' is not a date-time: {value!r}.", "created_after"
        ) from None


def _number(value: str | None, default: int, name: str, least: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or int(value) < least:
        raise BadRequest(f"Invalid {name!r}: {value!r}.", name)
    return int(value)


def _json(body: Any, status: int = 200) -> Response:
    return json_body(body, status, wire=_WIRE)


def _error(problem: Problem) -> Response:
    return error_body(problem, _WIRE)
