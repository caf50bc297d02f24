"""OpenAI's Files + Batch API for the OpenAI adapter (and presets whose service speaks it).

    job_id = await provider.submit(lines, metadata={"docroute_intent": "…"})
    state = await provider.poll(job_id)
    lines = await provider.results(job_id)       # LineResult per request, once ended

A job is one uploaded JSONL file of ``/v1/chat/completions`` bodies, each line
``{"custom_id", "method": "POST", "url", "body"}``, the body exactly what ``complete`` sends
(``OpenAIProvider.body``). Its answers come back in an output file (a line per request
that got an HTTP answer: ``response.status_code`` and ``body``, a ``ChatCompletion`` for a
200) and an error file (lines that got none, and, after a cancel or the expiry, every line
that never ran: ``batch_cancelled`` / ``batch_expired``). A job whose input failed
validation (``status: failed``) ran nothing: its ``JobState.error`` says why, and its
results are empty (every line unfinished). The limits are OpenAI's: 50,000 requests and
200 MB per file, a 24 h completion window.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import openai
from openai.types import Batch
from openai.types.chat import ChatCompletion

from pipeline import errors
from pipeline.providers.base import ChatRequest, ProviderReply
from pipeline.providers.batch import BatchLimits, BatchLine, JobPhase, JobState, LineResult
from pipeline.providers.errmap import Fields, by_status, cap, mentions_context_overflow
from pipeline.secrets import scrub

__all__ = ["OpenAIBatches"]

CHAT_COMPLETIONS: Final = "/v1/chat/completions"
_PHASES: dict[str, JobPhase] = {
    "validating": "pending",
    "in_progress": "running",
    "finalizing": "running",
    "cancelling": "running",
    "failed": "ended",
    "completed": "ended",
    "expired": "ended",
    "cancelled": "ended",
}
#: Error codes of lines that never ran (not billed).
_NOT_RUN = frozenset({"batch_cancelled", "batch_expired"})
#: Jobs read from the listing when looking for one submitted before a crash.
_FIND_SCAN = 500


class OpenAIBatches:
    """The batch methods of ``OpenAIProvider`` (its ``_client``, ``name`` and ``body``)."""

    batch_limits = BatchLimits(max_requests=50_000, max_bytes=200 * 1024 * 1024)
    _client: openai.AsyncOpenAI
    name: str

    if TYPE_CHECKING:  # the adapter's own

        def body(self, request: ChatRequest) -> dict[str, Any]: ...

        def _translate(self, exc: openai.APIError, model: str) -> errors.ProviderError: ...

    def _line(self, line: BatchLine) -> bytes:
        row = {
            "custom_id": line.custom_id,
            "method": "POST",
            "url": CHAT_COMPLETIONS,
            "body": self.body(line.request),
        }
        return json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    def line_bytes(self, line: BatchLine) -> int:
        return len(self._line(line))

    async def submit(self, lines: Sequence[BatchLine], *, metadata: dict[str, str]) -> str:
        if not lines:
            raise ValueError("a batch job needs at least one request")
        model = lines[0].request.model
        content = b"".join(self._line(line) for line in lines)
        try:
            upload = await self._client.files.create(
                file=("docroute-batch.jsonl", content), purpose="batch"
            )
            job = await self._client.batches.create(
                input_file_id=upload.id,
                endpoint=CHAT_COMPLETIONS,
                completion_window="24h",
                metadata=metadata,
            )
        except openai.APIError as exc:
            raise self._translate(exc, model) from exc
        return job.id

    async def poll(self, job_id: str) -> JobState:
        return _state(await self._call(self._client.batches.retrieve, job_id))

    async def cancel(self, job_id: str) -> JobState:
        try:
            return _state(await self._client.batches.cancel(job_id))
        except openai.ConflictError:  # it ended meanwhile: nothing left to cancel
            return await self.poll(job_id)
        except openai.APIError as exc:
            raise self._translate(exc, "") from exc

    async def results(self, job_id: str) -> list[LineResult]:
        job = await self._call(self._client.batches.retrieve, job_id)
        out: list[LineResult] = []
        for file_id in (job.output_file_id, job.error_file_id):
            if file_id:
                text = (await self._call(self._client.files.content, file_id)).text
                out.extend(self._read(line) for line in _rows(text))
        return out

    async def find(self, metadata: dict[str, str]) -> str | None:
        intent = metadata.get("docroute_intent")
        seen = 0
        try:
            async for job in self._client.batches.list(limit=100):
                if job.metadata and job.metadata.get("docroute_intent") == intent:
                    return job.id
                seen += 1
                if seen >= _FIND_SCAN:
                    return None
        except openai.APIError as exc:
            raise self._translate(exc, "") from exc
        return None

    async def _call(self, method: Any, job_id: str) -> Any:
        try:
            return await method(job_id)
        except openai.APIError as exc:
            raise self._translate(exc, "") from exc

    def _read(self, row: dict[str, Any]) -> LineResult:
        """One output- or error-file line as the request's result."""
        custom_id = str(row.get("custom_id"))
        response = row.get("response") or None
        error = row.get("error") or None
        if response is None:
            code = error.get("code") if isinstance(error, dict) else None
            if code in _NOT_RUN:
                return LineResult(custom_id, unfinished=True)
            message = (error or {}).get("message") if isinstance(error, dict) else None
            fields = Fields(self.name, "")
            return LineResult(
                custom_id, error=fields.error(errors.ServerError, _said(str(message)))
            )
        status = response.get("status_code")
        body = response.get("body")
        request_id = response.get("request_id")
        if status == 200 and isinstance(body, dict):
            try:
                completion = ChatCompletion.model_validate(body)
            except ValueError as exc:
                fields = Fields(self.name, str(body.get("model", "")), 200, request_id)
                message = _said(f"unreadable answer in the batch output: {exc}")
                return LineResult(custom_id, error=fields.error(errors.ServerError, message))
            return LineResult(custom_id, reply=_reply(completion, request_id))
        said = body.get("error") if isinstance(body, dict) else None
        message = said.get("message") if isinstance(said, dict) else None
        code = said.get("code") if isinstance(said, dict) else None
        fields = Fields(self.name, "", status, request_id)
        message = _said(str(message or f"HTTP {status}"))
        return LineResult(
            custom_id,
            error=by_status(
                status,
                message,
                fields,
                context_exceeded=mentions_context_overflow(message, code),
            ),
        )


def _reply(completion: ChatCompletion, request_id: str | None) -> ProviderReply:
    from pipeline.providers.openai import reply_of

    return reply_of(completion, request_id or completion.id, None)


def _state(job: Batch) -> JobState:
    """The job's phase and counts; a job that failed validation says why (nothing ran)."""
    counts = job.request_counts
    error = None
    if job.status == "failed":
        said = [e.message or e.code or "" for e in (job.errors.data or [])] if job.errors else []
        error = _said("; ".join(s for s in said if s) or "its input failed validation")
    total = counts.total if counts else 0
    done = (counts.completed + counts.failed) if counts else 0
    return JobState(
        job_id=job.id,
        phase=_PHASES.get(job.status, "running"),
        status=job.status,
        total=total,
        done=done,
        failed=counts.failed if counts else 0,
        error=error,
    )


def _said(text: str) -> str:
    """A server's words, scrubbed of secrets and capped for the ledger."""
    return cap(scrub(text) or "")


def _rows(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            if isinstance(row, dict):
                yield row
