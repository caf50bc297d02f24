"""OpenAI's Files and Batch API on every ``openai`` endpoint of the simulator.

Routes (under ``/{endpoint}``; the SDK's ``base_url`` ends in ``/v1``)::

    POST   /v1/files                    multipart ``file`` + ``purpose`` → FileObject
    GET    /v1/files/{file_id}          FileObject
    GET    /v1/files/{file_id}/content  the file's bytes
    DELETE /v1/files/{file_id}          FileDeleted
    POST   /v1/batches                  {input_file_id, endpoint, completion_window, metadata}
    GET    /v1/batches[?limit&after]    newest first, a cursor page
    GET    /v1/batches/{batch_id}       Batch
    POST   /v1/batches/{batch_id}/cancel

Through the official SDK, as a test does::

    client = openai.OpenAI(base_url=sim.add_endpoint("eu", EndpointProfile(
        batch_turnaround_s=1.0)), api_key="sk-sim")
    file = client.files.create(file=("in.jsonl", jsonl), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    ...                                                   # later: status "completed"
    client.files.content(client.batches.retrieve(batch.id).output_file_id).text

The files routes serve ``mistral`` endpoints too (Mistral's jobs, ``batch_mistral``, read
their input from them): there they answer with Mistral's file objects and errors, and take
Mistral's purposes (``batch``, ``fine-tune`` by default, …).

A job advances only when it is read (retrieved, listed or cancelled): then the lines its
schedule has reached (``batch_jobs``) are answered (``batch_lines``) and logged, and a job
that has ended gets its output and error files. The key is checked as on the chat route;
an unknown id is a 404 in OpenAI's error shape.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.sim_profiles import ProtocolName

from . import batch_mistral
from .batch_http import Handler, error_body, guarded, json_body, json_object
from .batch_jobs import (
    CHAT_COMPLETIONS,
    TERMINAL,
    BatchJob,
    BatchStore,
    StoredFile,
    new_id,
    store_of,
)
from .batch_lines import answer_line, read_input, stopped_line
from .protocols import WIRES
from .state import SimulatorState
from .wire import BadRequest, Problem, Wire

__all__ = ["batch_routes"]

_WIRE = WIRES["openai"]
_PURPOSES = frozenset(("assistants", "batch", "fine-tune", "vision", "user_data", "evals"))
#: The protocols whose endpoints the files routes serve (the batch routes: openai only).
_FILE_PROTOCOLS: frozenset[ProtocolName] = frozenset(("openai", "mistral"))
_BATCH_PROTOCOLS: frozenset[ProtocolName] = frozenset(("openai",))
_MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024
_CREATE_FIELDS = frozenset(
    ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after")
)


def batch_routes(state: SimulatorState) -> list[Route]:
    """The Files and Batch API routes over ``state``, on the store its batch routes share."""
    api = _BatchAPI(state, store_of(state))
    files = (
        ("/v1/files", "POST", api.upload),
        ("/v1/files/{file_id}", "GET", api.retrieve_file),
        ("/v1/files/{file_id}", "DELETE", api.delete_file),
        ("/v1/files/{file_id}/content", "GET", api.file_content),
    )
    batches = (
        ("/v1/batches", "POST", api.create),
        ("/v1/batches", "GET", api.list_batches),
        ("/v1/batches/{batch_id}", "GET", api.retrieve),
        ("/v1/batches/{batch_id}/cancel", "POST", api.cancel),
    )
    return [
        Route("/{endpoint}" + path, api.guarded(h, protocols), methods=[m])
        for routes, protocols in ((files, _FILE_PROTOCOLS), (batches, _BATCH_PROTOCOLS))
        for path, m, h in routes
    ]


class _BatchAPI:
    def __init__(self, state: SimulatorState, store: BatchStore) -> None:
        self.state, self.store = state, store

    def guarded(
        self, handler: Handler, protocols: frozenset[ProtocolName]
    ) -> Callable[[Request], Awaitable[Response]]:
        return guarded(self.state, handler, protocols)

    # -- files -----------------------------------------------------------------------------

    async def upload(self, request: Request, name: str) -> Response:
        mistral = self._protocol(name) == "mistral"
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequest("The request must be multipart/form-data with a file and a purpose.")
        async with request.form(max_part_size=_MAX_BATCH_FILE_BYTES) as form:
            upload = form.get("file")
            purpose = form.get("purpose", "fine-tune" if mistral else None)
            if not isinstance(upload, UploadFile):
                raise BadRequest(
                    "Missing required parameter: 'file'.", "file", "missing_required_parameter"
                )
            if purpose not in (batch_mistral.PURPOSES if mistral else _PURPOSES):
                raise BadRequest(
                    f"Invalid value for 'purpose': {purpose!r}.", "purpose", "invalid_value"
                )
            filename, content = upload.filename or "upload", await upload.read()
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise BadRequest("Invalid file format for Batch API. Must be .jsonl", "file")
        if purpose == "batch" and len(content) > _MAX_BATCH_FILE_BYTES:
            raise BadRequest("The batch input file is larger than the 200 MB limit.", "file")
        file_id = batch_mistral.new_file_id() if mistral else None
        stored = self.store.add_file(name, filename, purpose, content, int(time.time()), file_id)
        return self._file_json(name, stored)

    async def retrieve_file(self, request: Request, name: str) -> Response:
        stored = self.store.file(name, request.path_params["file_id"])
        if stored is None:
            return self._no_file(request, name)
        return self._file_json(name, stored, retrieved=True)

    async def file_content(self, request: Request, name: str) -> Response:
        stored = self.store.file(name, request.path_params["file_id"])
        if stored is None:
            return self._no_file(request, name)
        return Response(stored.content, media_type="application/octet-stream")

    async def delete_file(self, request: Request, name: str) -> Response:
        file_id = request.path_params["file_id"]
        if not self.store.delete_file(name, file_id):
            return self._no_file(request, name)
        return _json({"id": file_id, "object": "file", "deleted": True}, wire=self._wire(name))

    def _protocol(self, name: str) -> ProtocolName:
        profile = self.state.profile(name)
        assert profile is not None  # ``guarded`` let only registered endpoints through
        return profile.protocol

    def _wire(self, name: str) -> Wire:
        return WIRES[self._protocol(name)]

    def _file_json(self, name: str, stored: StoredFile, *, retrieved: bool = False) -> Response:
        """The endpoint's vendor's file object (Mistral's says ``deleted`` when retrieved)."""
        if self._protocol(name) != "mistral":
            return _json(stored.to_dict())
        return _json(batch_mistral.file_object(stored, retrieved), wire=self._wire(name))

    def _no_file(self, request: Request, name: str) -> Response:
        file_id = request.path_params["file_id"]
        return _error(Problem("not_found", f"No such File object: {file_id}"), self._wire(name))

    # -- batches ---------------------------------------------------------------------------

    async def create(self, request: Request, name: str) -> Response:
        body = _create_body(await request.body())
        stored = self.store.file(name, body["input_file_id"])
        if stored is None:
            return _error(Problem("not_found", f"No such File object: {body['input_file_id']}"))
        if stored.purpose != "batch":
            raise BadRequest(
                "The input file must be uploaded with purpose 'batch'.", "input_file_id"
            )
        profile = self.state.profile(name)
        assert profile is not None
        lines, errors, model = read_input(stored.content)
        now = self.state.now()
        job = BatchJob(
            new_id("batch_", 32), name, stored.id, body.get("metadata"), model, lines, errors,
            created=now, created_unix=time.time(), turnaround_s=profile.batch_turnaround_s,
            expire_after_s=profile.batch_expire_after_s,
        )  # fmt: skip
        self.store.add_job(job)
        return _json(job.to_dict(now))

    async def retrieve(self, request: Request, name: str) -> Response:
        job = self.store.job(name, request.path_params["batch_id"])
        if job is None:
            return _no_batch(request)
        now = self.state.now()
        self._advance(job, now)
        return _json(job.to_dict(now))

    async def list_batches(self, request: Request, name: str) -> Response:
        limit = _limit(request.query_params.get("limit"))
        jobs = self.store.jobs(name)
        after = request.query_params.get("after")
        if after is not None:
            ids = [job.id for job in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        page, now = jobs[:limit], self.state.now()
        for job in page:
            self._advance(job, now)
        data = [job.to_dict(now) for job in page]
        first, last = (page[0].id, page[-1].id) if page else (None, None)
        listed = {"object": "list", "data": data, "first_id": first, "last_id": last}
        return _json(listed | {"has_more": len(jobs) > limit})

    async def cancel(self, request: Request, name: str) -> Response:
        job = self.store.job(name, request.path_params["batch_id"])
        if job is None:
            return _no_batch(request)
        now = self.state.now()
        self._advance(job, now)
        status = job.status(now)
        if status in TERMINAL:
            # OpenAI answers 409 Conflict here (litellm's tests catch ConflictError for it).
            message = f"Cannot cancel a batch with status '{status}'."
            error = {"message": message, "type": "invalid_request_error", "param": None}
            return _json({"error": error | {"code": None}}, 409)
        if job.cancel_at is None:
            job.cancel_at = now
        return _json(job.to_dict(now))

    def _advance(self, job: BatchJob, now: float) -> None:
        """Answer the lines done by ``now``; write the files of a job that has ended."""
        for line in job.lines[len(job.results) : job.due(now)]:
            job.results.append(answer_line(self.state, job.endpoint, line, job.id))
        status = job.status(now)
        if job.finished or status not in TERMINAL or status == "failed":
            return
        ended = job.unix(now)
        outputs = [r.line for r in job.results if r.ok]
        errors = [r.line for r in job.results if not r.ok]
        code = "batch_cancelled" if status == "cancelled" else "batch_expired"
        errors += [stopped_line(line, job.id, code) for line in job.lines[len(job.results) :]]
        if outputs:
            job.output_file_id = self._output_file(job, "output", outputs, ended)
        if errors:
            job.error_file_id = self._output_file(job, "error", errors, ended)
        job.finished = True

    def _output_file(self, job: BatchJob, kind: str, lines: list[dict[str, Any]], at: int) -> str:
        content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        filename = f"{job.id}_{kind}.jsonl"
        return self.store.add_file(job.endpoint, filename, "batch_output", content.encode(), at).id


def _create_body(raw: bytes) -> dict[str, Any]:
    body = json_object(raw, "We could not parse the JSON body of your request.")
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown:
        raise BadRequest(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    if not isinstance(body.get("input_file_id"), str):
        raise BadRequest("Missing required parameter: 'input_file_id'.", "input_file_id",
                         "missing_required_parameter")  # fmt: skip
    if body.get("endpoint") != CHAT_COMPLETIONS:
        raise BadRequest(f"Invalid value: {body.get('endpoint')!r}. The simulator supports "
                         f"'{CHAT_COMPLETIONS}'.", "endpoint", "invalid_value")  # fmt: skip
    if body.get("completion_window") != "24h":
        raise BadRequest(f"Invalid value: {body.get('completion_window')!r}. Supported values "
                         "are: '24h'.", "completion_window", "invalid_value")  # fmt: skip
    _check_metadata(body.get("metadata"))
    return body


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    fits = isinstance(metadata, dict) and len(metadata) <= 16
    fits = fits and all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
        for k, v in metadata.items()
    )
    if not fits:
        message = "Invalid 'metadata': at most 16 string keys (64 chars) and values (512 chars)."
        raise BadRequest(message, "metadata", "invalid_value")


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise BadRequest(
            f"Invalid 'limit': {value!r}; expected 1 to 100.", "limit", "invalid_value"
        )
    return int(value)


def _json(body: Any, status: int = 200, wire: Wire = _WIRE) -> Response:
    return json_body(body, status, wire=wire)


def _error(problem: Problem, wire: Wire = _WIRE) -> Response:
    return error_body(problem, wire)


def _no_batch(request: Request) -> Response:
    return _error(
        Problem("not_found", f"No batch found with id '{request.path_params['batch_id']}'.")
    )
