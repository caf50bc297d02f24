"""Mistral chat completions through the official ``mistralai`` SDK.

    provider = MistralProvider(EndpointSettings(name="mistral-eu", base_url=None, ...))
    reply = await provider.complete(request)   # ProviderReply, or raises pipeline.errors.*

Structured output uses ``response_format`` ``json_schema`` with ``strict: true``. The SDK
retries nothing unless given a ``RetryConfig``, and this adapter gives it none: one call
is one HTTP attempt.

The SDK raises its own ``SDKError`` family for HTTP error answers, but lets transport
failures through as raw ``httpx2`` exceptions (timeouts, refused or cut connections); both
are translated here, and nothing above this module sees a ``mistralai`` or ``httpx2`` type.
A successful call returns only the parsed body, so the response headers (rate limits,
request id) are read by an event hook on the adapter's own ``httpx2`` client.

The adapter also runs Mistral batch jobs (``pipeline.providers.batch``), at half price:

    job_id = await provider.submit(lines, metadata={"docroute_intent": intent})
    state = await provider.poll(job_id)            # QUEUED → pending, RUNNING → running, …
    results = await provider.results(job_id)       # a LineResult per request, once ended

A job is one uploaded JSONL file of ``{"custom_id", "body"}`` lines, each body what
``complete`` sends without its ``model`` (the job names the model, so all lines share it).
The output and error files carry ``{"custom_id", "response": {"status_code", "body"},
"error"}`` lines: a 200's body is a ``ChatCompletionResponse``, read as ``complete`` reads
it; any other answer is the error its status means. A cancelled or timed-out job leaves
lines in neither file: those are ``unfinished`` (not run, not billed).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Final, TypeVar

import httpx2
from mistralai.client import Mistral, errors, models, utils

from pipeline import errors as docroute_errors
from pipeline.models import Usage
from pipeline.providers.base import ChatRequest, EndpointSettings, ProviderReply
from pipeline.providers.batch import BatchLimits, BatchLine, JobPhase, JobState, LineResult
from pipeline.providers.errmap import (
    Fields,
    by_status,
    cap,
    connect_failure,
    mentions_context_overflow,
    protocol_violation,
    server_message,
    transport,
)
from pipeline.providers.headers import mistral_limits
from pipeline.providers.presets import strip_version
from pipeline.secrets import scrub

# Without a key the SDK falls back to MISTRAL_API_KEY or a service-account token file; a
# placeholder keeps a keyless endpoint (the simulator) from ever receiving one.
_KEYLESS = "no-key"
_CUT = frozenset({"length", "model_length"})
# The response headers of the call running in this task (set by ``complete``).
_HEADERS: ContextVar[dict[str, Mapping[str, str]] | None] = ContextVar(
    "docroute_mistral_headers", default=None
)
_SDK_ERRORS = (errors.MistralError, errors.NoResponseError, httpx2.RequestError)
CHAT_COMPLETIONS: Final = "/v1/chat/completions"
_PHASES: dict[str, JobPhase] = {
    "QUEUED": "pending",
    "RUNNING": "running",
    "CANCELLATION_REQUESTED": "running",
    "SUCCESS": "ended",
    "FAILED": "ended",
    "TIMEOUT_EXCEEDED": "ended",
    "CANCELLED": "ended",
}
_PAGE = 100  # jobs per page of the listing that ``find`` reads
_T = TypeVar("_T")


class MistralProvider:
    """Adapter for the Mistral chat-completions protocol, and its batch jobs."""

    # docs.mistral.ai/capabilities/batch: "batches of up to 1M requests"; the files API
    # takes files of up to 512 MB (docs.mistral.ai/api/endpoint/files). Jobs time out after
    # ``timeout_hours``, 24 unless asked otherwise.
    batch_limits = BatchLimits(max_requests=1_000_000, max_bytes=512 * 1024 * 1024)

    def __init__(self, settings: EndpointSettings) -> None:
        self.name = settings.name
        key = settings.api_key.get_secret_value() if settings.api_key else _KEYLESS
        self._http = httpx2.AsyncClient(
            follow_redirects=True, event_hooks={"response": [_keep_headers]}
        )
        self._client = Mistral(
            api_key=key,
            server_url=strip_version(settings.base_url),
            async_client=self._http,
            retry_config=None,
            timeout_ms=max(int(settings.timeout_s * 1000), 1),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(self, request: ChatRequest) -> ProviderReply:
        fields = Fields(self.name, request.model)
        box: dict[str, Mapping[str, str]] = {}
        token = _HEADERS.set(box)
        try:
            response = await self._client.chat.complete_async(**_params(request))
        except _SDK_ERRORS as exc:
            raise _translate(exc, fields) from exc
        finally:
            _HEADERS.reset(token)
        return _reply(response, box.get("headers", {}))

    # -- batch jobs ------------------------------------------------------------------------

    def line_bytes(self, line: BatchLine) -> int:
        return len(_batch_line(line))

    async def submit(self, lines: Sequence[BatchLine], *, metadata: dict[str, str]) -> str:
        if not lines:
            raise ValueError("a batch job needs at least one request")
        model = lines[0].request.model
        others = sorted({line.request.model for line in lines} - {model})
        if others:
            raise ValueError(f"a Mistral batch job runs one model: {model!r}, not {others}")
        upload = models.File(
            file_name="docroute-batch.jsonl", content=b"".join(map(_batch_line, lines))
        )
        fields = Fields(self.name, model)
        sent = await self._sdk(
            fields, self._client.files.upload_async, file=upload, purpose="batch"
        )
        job = await self._sdk(
            fields,
            self._client.batch.jobs.create_async,
            input_files=[sent.id],
            endpoint=CHAT_COMPLETIONS,
            model=model,
            metadata=metadata,
        )
        return job.id

    async def poll(self, job_id: str) -> JobState:
        return _state(await self._job(job_id))

    async def cancel(self, job_id: str) -> JobState:
        cancel = self._client.batch.jobs.cancel_async
        try:
            return _state(await self._sdk(Fields(self.name, ""), cancel, job_id=job_id))
        except docroute_errors.BadRequest:
            state = await self.poll(job_id)  # it ended meanwhile: nothing left to cancel
            if state.ended:
                return state
            raise

    async def results(self, job_id: str) -> list[LineResult]:
        job = await self._job(job_id)
        fields = Fields(self.name, job.model or "")
        out: list[LineResult] = []
        for file_id in (job.output_file, job.error_file):
            if file_id:
                out.extend(_line_result(row, fields) for row in await self._rows(file_id))
        stopped = _PHASES.get(str(job.status)) == "ended"
        if stopped and job.completed_requests < job.total_requests:  # the rest never ran
            mentioned = {line.custom_id for line in out}
            for file_id in job.input_files:
                for row in await self._rows(file_id):
                    custom_id = str(row.get("custom_id"))
                    if custom_id not in mentioned:
                        out.append(LineResult(custom_id, unfinished=True))
        return out

    async def find(self, metadata: dict[str, str]) -> str | None:
        intent = metadata.get("docroute_intent")
        list_jobs = self._client.batch.jobs.list_async
        fields = Fields(self.name, "")
        page = 0
        while True:  # the server filters by metadata; the check here holds whatever it does
            listed = await self._sdk(
                fields, list_jobs, page=page, page_size=_PAGE, metadata=metadata
            )
            for job in listed.data or []:
                if job.metadata and job.metadata.get("docroute_intent") == intent:
                    return job.id
            if not listed.data or (page + 1) * _PAGE >= listed.total:
                return None
            page += 1

    async def _job(self, job_id: str) -> models.BatchJob:
        fields = Fields(self.name, "")
        return await self._sdk(fields, self._client.batch.jobs.get_async, job_id=job_id)

    async def _rows(self, file_id: str) -> list[dict[str, Any]]:
        """The JSON lines of one of the job's files."""
        fields = Fields(self.name, "")
        response = await self._sdk(fields, self._client.files.download_async, file_id=file_id)
        try:
            text = (await response.aread()).decode("utf-8", "replace")
        except httpx2.RequestError as exc:
            raise _translate(exc, fields) from exc
        finally:
            await response.aclose()
        try:
            return list(_json_rows(text))
        except ValueError as exc:  # the vendor's file is not JSONL
            message = f"file {file_id} of a batch job is not JSON lines: {exc}"
            raise fields.error(docroute_errors.ServerError, cap(message)) from exc

    async def _sdk(self, fields: Fields, call: Callable[..., Awaitable[_T]], **kw: Any) -> _T:
        """``call(**kw)``, its SDK and transport errors translated."""
        try:
            return await call(**kw)
        except _SDK_ERRORS as exc:
            raise _translate(exc, fields) from exc


def _batch_line(line: BatchLine) -> bytes:
    """The JSONL line of one request: the body ``complete`` sends, without the model."""
    request = models.ChatCompletionRequest(**_params(line.request))
    body = json.loads(utils.marshal_json(request, models.ChatCompletionRequest))
    del body["model"]
    row = {"custom_id": line.custom_id, "body": body}
    return json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _state(job: models.BatchJob) -> JobState:
    """The job's phase and counts; a job that failed as a whole says why."""
    error = None
    if job.status == "FAILED":
        said = "; ".join(e.message for e in job.errors if e.message)
        error = cap(scrub(said) or "the job failed before running its requests")
    return JobState(
        job_id=job.id,
        phase=_PHASES.get(str(job.status), "running"),
        status=str(job.status),
        total=job.total_requests,
        done=job.completed_requests,
        failed=job.failed_requests,
        error=error,
    )


def _line_result(row: dict[str, Any], fields: Fields) -> LineResult:
    """One output- or error-file line as its request's result."""
    custom_id = str(row.get("custom_id"))
    response = row.get("response")
    if not isinstance(response, dict):  # no HTTP answer: the vendor's error says why
        error = row.get("error")
        message = cap(scrub(server_message(json.dumps(error)) or "") or "no answer in the job")
        timed_out = "timeout" in str(error.get("code") if isinstance(error, dict) else error)
        kind = docroute_errors.Timeout if timed_out else docroute_errors.ServerError
        return LineResult(custom_id, error=fields.error(kind, message))
    status, body = response.get("status_code"), response.get("body")
    text = body if isinstance(body, str) else json.dumps(body)
    line_fields = Fields(fields.provider, fields.model, http_status=status)
    if status == 200:
        try:
            completion = models.ChatCompletionResponse.model_validate(body)
        except ValueError as exc:
            unreadable = cap(scrub(str(exc)) or type(exc).__name__)
            return LineResult(custom_id, error=protocol_violation(unreadable, line_fields))
        return LineResult(custom_id, reply=_reply(completion, {}))
    said, code = _said(text)
    message = cap(scrub(said or f"HTTP {status}") or f"HTTP {status}")
    overflow = mentions_context_overflow(said, code)
    return LineResult(
        custom_id, error=by_status(status, message, line_fields, context_exceeded=overflow)
    )


def _json_rows(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            if isinstance(row, dict):
                yield row


async def _keep_headers(response: httpx2.Response) -> None:
    box = _HEADERS.get()
    if box is not None:
        box["headers"] = response.headers


def _params(request: ChatRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "max_tokens": request.max_output_tokens,
        "response_format": models.ResponseFormat(
            type="json_schema",
            json_schema=models.JSONSchema(
                name=request.schema_name, schema_definition=request.json_schema, strict=True
            ),
        ),
    }
    if request.temperature is not None:
        params["temperature"] = request.temperature
    return params


def _reply(response: models.ChatCompletionResponse, headers: Mapping[str, str]) -> ProviderReply:
    choice = response.choices[0] if response.choices else None
    finish = str(choice.finish_reason) if choice is not None else None
    return ProviderReply(
        text=_text(choice.message.content) if choice and choice.message else None,
        finish_reason="length" if finish in _CUT else finish,
        usage=_usage(response.usage),
        request_id=headers.get("x-request-id") or response.id,
        model_reported=response.model,
        limits=mistral_limits(headers),
    )


def _text(content: Any) -> str | None:
    """The answer's text: a string, or the text of a list of content chunks."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [c.text for c in content if getattr(c, "type", None) == "text"]
        return "".join(texts) if texts else None
    return None  # UNSET: the answer had no content


def _usage(usage: models.UsageInfo | None) -> Usage:
    if usage is None:
        return Usage()
    # Cached prompt tokens are not a field of the SDK's UsageInfo; read them when the
    # server sends OpenAI's ``prompt_tokens_details`` (kept in the model's extras).
    details = (usage.additional_properties or {}).get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cached_input_tokens=cached if isinstance(cached, int) else 0,
    )


def _translate(
    exc: errors.MistralError | errors.NoResponseError | httpx2.RequestError, fields: Fields
) -> docroute_errors.ProviderError:
    if isinstance(exc, httpx2.RequestError):
        refused = connect_failure(exc, exc.request.url)  # "All connection attempts failed"
        message = cap(scrub(refused or str(exc)) or type(exc).__name__)
        return transport(isinstance(exc, httpx2.TimeoutException), message, fields, cause=exc)
    if isinstance(exc, errors.NoResponseError):
        return transport(False, scrub(exc.message) or "no response", fields, cause=exc)
    headers = exc.headers
    fields = Fields(
        fields.provider,
        fields.model,
        http_status=exc.status_code,
        request_id=headers.get("x-request-id"),
        limits=mistral_limits(headers),
    )
    said, code = _said(exc.body)
    message = cap(scrub(said or exc.message) or type(exc).__name__)
    if isinstance(exc, errors.ResponseValidationError) or exc.status_code < 400:
        # A 200 that is not the protocol's body (the SDK's "Unexpected response received").
        return protocol_violation(message, fields)
    return by_status(
        exc.status_code,
        message,
        fields,
        headers=headers,
        context_exceeded=mentions_context_overflow(said, code),
    )


def _said(body: str | None) -> tuple[str | None, str | None]:
    """``(message, code)`` from an error body: ``{"message": …, "code": …}``,
    ``{"error": {"message": …}}``, a 422's ``{"detail": [{"msg": …}, …]}``, or any other
    shape or plain text (``server_message``)."""
    try:
        data = json.loads(body or "")
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    inner: dict[str, Any] = error if isinstance(error, dict) else data or {}
    code = inner.get("code") if isinstance(inner, dict) else None
    return server_message(body), str(code) if code is not None else None
