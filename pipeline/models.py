"""The values that flow between stages.

    Document ──extract──▶ text ──chunk──▶ Chunk ──dispatch──▶ Result + [LedgerEntry, …]

They are plain frozen dataclasses: cheap to build by the hundred thousand, easy to turn
into Parquet rows (``dataclasses.asdict``), and free of any Prefect or SDK type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ResultStatus = Literal["succeeded", "failed", "skipped"]
DocumentStatus = Literal["ok", "error", "deleted"]

#: Every value the ledger's ``outcome`` column can take.
Outcome = Literal[
    "ok",
    "invalid_output",
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection_error",
    "auth_error",
    "bad_request",
    "context_exceeded",
    "budget_exhausted",
    "no_route",
    "internal_error",
    "interrupted",  # the process died with the call in flight: its reserved worst case
    "uncertain",  # the request left but no answer said what it cost: its reserved worst case
    "output_truncated",  # the answer was cut off at the output cap (billed as reported)
    "document_breaker",  # not sent: too many chunks of its document failed the same way
    "endpoint_disabled",  # the endpoint repeated one error until it was disabled for the run
    "batch_unfinished",  # its batch job was cancelled or expired before it ran: not billed
]

#: Ledger outcomes booked at the reserved worst case rather than at reported usage.
WORST_CASE_OUTCOMES: tuple[Outcome, ...] = ("interrupted", "uncertain")


def stable_id(*parts: str | int) -> str:
    """A short, deterministic content hash of ``parts`` (32 hex chars of blake2b)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Document:
    """A file found in the corpus, before extraction.

    ``path`` is the POSIX path relative to the corpus root it was found under; it is what
    residency globs match and what users see. ``doc_id`` is a hash of that path, so the
    same file keeps its id from run to run.
    A record of a JSON Lines file made its own document has the path ``<file>#<key>``
    (``pipeline.ingest.jsonl``) and its file's ``abs_path``.
    """

    doc_id: str
    path: str
    abs_path: Path
    size_bytes: int

    @classmethod
    def at(cls, root: Path, abs_path: Path, size_bytes: int) -> Document:
        rel = abs_path.relative_to(root).as_posix()
        return cls(doc_id=stable_id(rel), path=rel, abs_path=abs_path, size_bytes=size_bytes)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A token-bounded slice of a document: ``document_text[char_start:char_end] == text``.

    ``chunk_id`` hashes the document id, the offset and the text, so it is stable across
    runs for unchanged content and distinct for repeated passages in one document.
    ``regions`` are the regions the chunk may be sent to (empty: nowhere), and
    ``residency_rule`` names the rule that decided them.
    """

    chunk_id: str
    doc_id: str
    path: str
    index: int
    char_start: int
    char_end: int
    token_estimate: int
    text: str
    regions: tuple[str, ...]
    residency_rule: str
    pages: tuple[int, ...] = ()
    """1-based pages the chunk spans, for paged formats (PDF); empty otherwise."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts exactly as the provider reported them.

    ``input_tokens`` is the whole prompt: it includes ``cached_input_tokens`` (read from a
    prompt cache) and ``cache_write_tokens`` (written to one, which Anthropic bills higher).
    Adapters normalise their vendor's fields to this convention.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One attempt: the only place money is counted. See DESIGN.md, "Stored data"."""

    run_id: str
    chunk_id: str
    attempt: int
    provider: str | None
    model: str | None
    region: str | None
    mode: str
    started_at: float
    latency_ms: float
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    cost_usd: float
    reserved_usd: float
    outcome: Outcome
    http_status: int | None
    error: str | None
    request_id: str | None = None
    model_reported: str | None = None
    attempt_id: str | None = None
    """Unique per ledger row: what makes journal recovery idempotent. For a request of a
    batch job it is also the request's ``custom_id``."""
    batch_id: str | None = None
    """The provider's batch job that carried the attempt (``mode`` = ``batch``), else None."""


@dataclass(frozen=True, slots=True)
class Result:
    """The one terminal row of a chunk in a run."""

    run_id: str
    chunk_id: str
    doc_id: str
    path: str
    status: ResultStatus
    reason: str | None
    output: str | None
    provider: str | None
    model: str | None
    region: str | None
    attempts: int
    cost_usd: float
    finished_at: float
    schema_name: str
    error: str | None = None
    """Why the last attempt failed (scrubbed), for failed and skipped chunks."""
    schema_version: str | None = None
    """Version of the schema the answer follows (with ``schema_name``)."""
    idem_key: str | None = None
    """(chunk content, schema version, prompt version, model policy) hashed: a succeeded
    result with the same key in the run family is reused instead of asked for again."""
    reused_from: str | None = None
    """The run whose committed answer this result reuses (no call was made), if any."""
    excluded: str | None = None
    """JSON list of the candidates preflight left out for this chunk and why
    (``[{"endpoint": "p/m", "reason": "context_window"}]``), so a route can be explained."""


@dataclass(slots=True)
class BatchOutcome:
    """What one batch task hands back to the flow: its rows and its tallies."""

    results: list[Result] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"succeeded": 0, "failed": 0, "skipped": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def spend(self) -> float:
        return sum(e.cost_usd for e in self.ledger)


JSONDict = dict[str, Any]
