"""Anthropic Messages through the official ``anthropic`` SDK.

    provider = AnthropicProvider(EndpointSettings(name="claude-eu", base_url=None, ...))
    reply = await provider.complete(request)   # ProviderReply, or raises pipeline.errors.*

Structured output takes one of two shapes, chosen per model (``structured_mode``):
``json_schema`` asks for ``output_config.format`` with the schema passed through the SDK's
``transform_schema`` (the API refuses some JSON-schema keywords; the SDK folds them into
descriptions, and pydantic still enforces them afterwards); ``tool`` forces a call of one
tool whose ``input_schema`` is the schema, and the tool's input is the answer.

The SDK's retries are off (``max_retries=0``): one call is one HTTP attempt. Usage is
normalised to docroute's convention, where ``input_tokens`` is the whole prompt: Anthropic
reports fresh, cache-read and cache-write input tokens separately. Every SDK exception is
translated here; nothing above this module sees an ``anthropic`` type.

Batches (the Message Batches API, ``pipeline.providers.batch``'s contract) carry the same
params as ``complete`` sends, and their answers become the same replies:

    job_id = await provider.submit(lines, metadata=metadata)   # one messages.batches.create
    state = await provider.poll(job_id)             # in_progress / canceling → running; ended
    lines = await provider.results(job_id)          # a LineResult per request, once ended

A batch holds up to 100,000 requests or 256 MB. It has no metadata, so ``find`` recognises
one by its creation time and size (see there).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anthropic
from anthropic import AsyncAnthropic, DefaultAioHttpClient, transform_schema
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from anthropic.types.shared import ErrorResponse

from pipeline import errors
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
    timed_out,
    transport,
)
from pipeline.providers.headers import anthropic_limits
from pipeline.providers.presets import strip_version
from pipeline.secrets import scrub

# Without a key the SDK would look for one in the environment and in profile files on
# disk; a placeholder keeps a keyless endpoint (the simulator) from ever receiving one.
_KEYLESS = "no-key"
# Stop reasons after which the answer is cut short: the budget of output tokens, or the
# model's context window, ran out.
_CUT = frozenset({"max_tokens", "model_context_window_exceeded"})
#: docroute's phase of a batch, by its ``processing_status``.
_PHASES: dict[str, JobPhase] = {"in_progress": "running", "canceling": "running", "ended": "ended"}
#: The HTTP status each error type of an errored batch line would have come with alone
#: (Anthropic's error docs), so the line maps to the error a call would have raised.
_STATUS_OF_ERROR = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
#: How far from docroute's ``docroute_submitted_at`` a batch ``find`` accepts was created:
#: a clock a little ahead of the vendor's, or a create that took long to be answered.
_FIND_BEFORE_S, _FIND_AFTER_S = 120.0, 900.0


class AnthropicProvider:
    """Adapter for the Anthropic Messages protocol."""

    def __init__(self, settings: EndpointSettings) -> None:
        self.name = settings.name
        key = settings.api_key.get_secret_value() if settings.api_key else _KEYLESS
        self._client = AsyncAnthropic(
            api_key=key,
            base_url=strip_version(settings.base_url),
            max_retries=0,
            timeout=settings.timeout_s,
            http_client=DefaultAioHttpClient(),  # the SDK's faster async transport
            _strict_response_validation=settings.strict_validation,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, request: ChatRequest) -> ProviderReply:
        fields = Fields(self.name, request.model)
        try:
            raw = await self._client.messages.with_raw_response.create(**_params(request))
            message = await raw.parse()
        except anthropic.AnthropicError as exc:
            raise _translate(exc, fields) from exc
        except ValueError as exc:  # a 200 whose body is not JSON
            raise protocol_violation(scrub(str(exc)) or type(exc).__name__, fields) from exc
        return _reply(message, _forced_tool(request), raw.headers)

    # -- batches (pipeline.providers.batch.BatchProvider) ------------------------------------

    batch_limits = BatchLimits(max_requests=100_000, max_bytes=256 * 1024 * 1024)

    def line_bytes(self, line: BatchLine) -> int:
        """The request's JSON as the SDK writes it in ``requests``, and the comma after it."""
        text = json.dumps(_batch_request(line), ensure_ascii=False, separators=(",", ":"))
        return len(text.encode()) + 1

    async def submit(self, lines: Sequence[BatchLine], *, metadata: dict[str, str]) -> str:
        """Create one batch of ``lines``. Anthropic keeps no metadata: ``find`` recognises the
        batch by ``metadata``'s submission time and request count instead."""
        if not lines:
            raise ValueError("a batch job needs at least one request")
        requests: Any = [_batch_request(line) for line in lines]
        try:
            batch = await self._client.messages.batches.create(requests=requests)
        except anthropic.AnthropicError as exc:
            raise _translate(exc, Fields(self.name, lines[0].request.model)) from exc
        return batch.id

    async def poll(self, job_id: str) -> JobState:
        return _job_state(await self._job_call(self._client.messages.batches.retrieve, job_id))

    async def cancel(self, job_id: str) -> JobState:
        try:
            return _job_state(await self._client.messages.batches.cancel(job_id))
        except anthropic.BadRequestError as exc:  # refused because it ended meanwhile?
            state = await self.poll(job_id)
            if state.ended:
                return state
            raise _translate(exc, Fields(self.name, "")) from exc
        except anthropic.AnthropicError as exc:
            raise _translate(exc, Fields(self.name, "")) from exc

    async def results(self, job_id: str) -> list[LineResult]:
        """Each request's result, read (and checked) from the batch's results file."""
        raw = await self._job_call(self._client.messages.batches.with_raw_response.results, job_id)
        try:
            content = await raw.read()
        except anthropic.AnthropicError as exc:
            raise _translate(exc, Fields(self.name, "")) from exc
        return [self._line_result(row) for row in _rows(content, Fields(self.name, ""))]

    async def find(self, metadata: dict[str, str]) -> str | None:
        """The batch ``submit`` created for ``metadata``, if one was.

        Anthropic batches carry no metadata, so docroute's intent id cannot be looked up:
        the closest Anthropic allows is a listed batch created within
        [``docroute_submitted_at`` - 120 s, + 900 s] holding ``docroute_requests`` requests
        (the one created nearest that time, if several are). Two jobs of one size submitted
        within that span cannot be told apart.
        """
        submitted, count = _submission(metadata)
        earliest, latest = submitted - _FIND_BEFORE_S, submitted + _FIND_AFTER_S
        found: tuple[float, str] | None = None
        try:
            async for batch in self._client.messages.batches.list(limit=100):
                created = batch.created_at.timestamp()
                if created < earliest:
                    break  # newest first: the rest are older still
                fits = created <= latest and _total(batch) == count
                if fits and (found is None or abs(created - submitted) < found[0]):
                    found = (abs(created - submitted), batch.id)
        except anthropic.AnthropicError as exc:
            raise _translate(exc, Fields(self.name, "")) from exc
        return found[1] if found else None

    async def _job_call(self, method: Any, job_id: str) -> Any:
        try:
            return await method(job_id)
        except anthropic.AnthropicError as exc:
            raise _translate(exc, Fields(self.name, "")) from exc

    def _line_result(self, row: dict[str, Any]) -> LineResult:
        custom_id = str(row.get("custom_id"))
        try:
            result = MessageBatchIndividualResponse.model_validate(row).result
        except ValueError as exc:  # pydantic's ValidationError
            said = cap(scrub(f"unreadable line of the batch results: {exc}") or "unreadable")
            return LineResult(custom_id, error=protocol_violation(said, Fields(self.name, "")))
        if result.type == "succeeded":
            answer = result.message
            return LineResult(custom_id, reply=_reply(answer, _tool_used(answer), {}))
        if result.type == "errored":
            return LineResult(custom_id, error=_line_error(result.error, self.name))
        return LineResult(custom_id, unfinished=True)  # canceled or expired: never ran


def _batch_request(line: BatchLine) -> dict[str, Any]:
    return {"custom_id": line.custom_id, "params": _params(line.request)}


def _job_state(batch: MessageBatch) -> JobState:
    counts = batch.request_counts
    return JobState(
        job_id=batch.id,
        phase=_PHASES.get(batch.processing_status, "running"),
        status=batch.processing_status,
        total=_total(batch),
        done=_total(batch) - counts.processing,
        failed=counts.errored + counts.canceled + counts.expired,
    )


def _total(batch: MessageBatch) -> int:
    c = batch.request_counts
    return c.processing + c.succeeded + c.errored + c.canceled + c.expired


def _rows(content: bytes, fields: Fields) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise protocol_violation(
                f"line {number} of the batch results is not JSON", fields
            ) from exc
        if isinstance(row, dict):
            yield row


def _line_error(response: ErrorResponse, provider: str) -> errors.ProviderError:
    """An errored line as the error its request would have raised alone (``_translate``)."""
    said = response.error
    status = _STATUS_OF_ERROR.get(said.type, 500)
    message = cap(scrub(said.message) or said.type)
    fields = Fields(provider, "", http_status=status, request_id=response.request_id)
    overflow = mentions_context_overflow(message, said.type)
    return by_status(status, message, fields, context_exceeded=overflow)


def _submission(metadata: dict[str, str]) -> tuple[float, int]:
    """(``docroute_submitted_at``, ``docroute_requests``) of a job's metadata."""
    try:
        return float(metadata["docroute_submitted_at"]), int(metadata["docroute_requests"])
    except (KeyError, ValueError) as exc:
        raise ValueError(
            "finding an Anthropic batch needs docroute_submitted_at (unix seconds) and "
            f"docroute_requests (a count) in its metadata, not {metadata!r}"
        ) from exc


def _params(request: ChatRequest) -> dict[str, Any]:
    # The SDK's ``create`` has no temperature parameter (2.x): ``request.temperature`` is
    # not sent.
    system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "messages": _turns(request.messages),
    }
    if system:
        params["system"] = system
    if request.structured_mode == "tool":
        params["tools"] = [
            {
                "name": request.schema_name,
                "description": f"Record the answer as a {request.schema_name} object.",
                "input_schema": request.json_schema,
            }
        ]
        params["tool_choice"] = {"type": "tool", "name": request.schema_name}
    else:
        schema = transform_schema(request.json_schema)
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    return params


def _turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    # The API refuses empty turns; a repair prompt echoes an empty answer as one. Dropping
    # it leaves two user turns in a row, which the API merges.
    return [
        {"role": m["role"], "content": m["content"]}
        for m in messages
        if m["role"] != "system" and m["content"].strip()
    ]


def _reply(message: Any, tool: str | None, headers: Mapping[str, str]) -> ProviderReply:
    """The reply for ``message``; ``tool`` is the forced tool whose input is the answer."""
    stop = message.stop_reason
    return ProviderReply(
        text=_answer(message.content, tool),
        finish_reason="length" if stop in _CUT else stop,
        refusal=_refusal(message) if stop == "refusal" else None,
        usage=normalise_usage(message.usage),
        request_id=headers.get("request-id") or message.id,
        model_reported=message.model,
        limits=anthropic_limits(headers),
    )


def _forced_tool(request: ChatRequest) -> str | None:
    return request.schema_name if request.structured_mode == "tool" else None


def _tool_used(message: Any) -> str | None:
    """The tool a batch line's answer called: only ``tool`` mode sends tools, and it
    forces one, so a ``tool_use`` block is that mode's answer."""
    return next((b.name for b in message.content if b.type == "tool_use"), None)


def _answer(blocks: list[Any], tool: str | None) -> str | None:
    """The forced tool's input as JSON text in ``tool`` mode, else the text blocks."""
    if tool is not None:
        for block in blocks:
            if block.type == "tool_use" and block.name == tool:
                return json.dumps(block.input, ensure_ascii=False)
    texts = [block.text for block in blocks if block.type == "text"]
    return "".join(texts) if texts else None


def _refusal(message: Any) -> str:
    details = message.stop_details
    if details is not None and details.explanation:
        return str(details.explanation)
    said = "".join(b.text for b in message.content if b.type == "text").strip()
    if said:
        return said
    category = details.category if details is not None else None
    return f"the model refused ({category})" if category else "the model refused"


def normalise_usage(usage: Any) -> Usage:
    """Anthropic counts fresh, cache-read and cache-write input apart; docroute's
    ``input_tokens`` is their sum."""
    if usage is None:
        return Usage()
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    return Usage(
        input_tokens=(usage.input_tokens or 0) + read + written,
        output_tokens=usage.output_tokens or 0,
        cached_input_tokens=read,
        cache_write_tokens=written,
    )


def _translate(exc: anthropic.AnthropicError, fields: Fields) -> errors.ProviderError:
    if isinstance(exc, anthropic.APIConnectionError):
        # "Connection error." / "Request timed out." say less than the OS's reason.
        message = scrub(connect_failure(exc, exc.request.url)) or _message(exc)
        # APITimeoutError is an APIConnectionError; aiohttp's errors are not all timeouts.
        late = isinstance(exc, anthropic.APITimeoutError) and timed_out(exc)
        return transport(late, message, fields, cause=exc)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return protocol_violation(_message(exc), _with_response(fields, exc))
    if isinstance(exc, anthropic.APIStatusError):
        message = _message(exc)
        return by_status(
            exc.status_code,
            message,
            _with_response(fields, exc),
            headers=exc.response.headers,
            context_exceeded=mentions_context_overflow(message, exc.error_code),
        )
    # Not an HTTP exchange (credentials, client misuse): this endpoint cannot serve it.
    return fields.error(errors.BadRequest, _message(exc))


def _with_response(
    fields: Fields, exc: anthropic.APIStatusError | anthropic.APIResponseValidationError
) -> Fields:
    headers = exc.response.headers
    return Fields(
        fields.provider,
        fields.model,
        http_status=exc.status_code,
        request_id=headers.get("request-id"),
        limits=anthropic_limits(headers),
    )


def _message(exc: anthropic.AnthropicError) -> str:
    """The API's own words when it sent some (``error.message``, or whatever another
    server's body says: ``server_message``), else the SDK's."""
    said = getattr(exc, "api_message", None)
    if not said and isinstance(exc, anthropic.APIStatusError):
        said = server_message(exc.body)
    said = said or getattr(exc, "message", None) or str(exc)
    return cap(scrub(str(said)) or type(exc).__name__)
