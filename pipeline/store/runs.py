"""Run records and per-document rows.

A run's record is appended again each time it changes (started, counts updated,
finished); nothing is rewritten, and the ``runs`` view shows the latest record of each
run by ``updated_at``::

    record = RunRecord(run_id="r1", flow="nightly", config_hash="c0ffee", corpus="eu/",
                       schema_name="invoice", budget_usd=5.0, started_at=time.time())
    store.write_run(record)                      # status "running"
    record.status, record.finished_at = "succeeded", time.time()
    store.write_run(record)                      # the runs view now shows this one
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pipeline.models import DocumentStatus

RunStatus = Literal["running", "succeeded", "completed_with_failures", "failed", "interrupted"]


@dataclass(slots=True)
class RunRecord:
    """One version of a run's record (the ``runs`` table). Times are epoch seconds.

    ``updated_at`` left at 0 is set to the write time by ``Store.write_run``.
    """

    run_id: str
    flow: str
    config_hash: str
    corpus: str
    schema_name: str
    budget_usd: float
    started_at: float
    status: RunStatus = "running"
    parent_run_id: str | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    spend_usd: float = 0.0
    documents: int = 0
    document_errors: int = 0
    chunks: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    message: str | None = None
    token_counter: str | None = None
    family_id: str | None = None
    """The first run of the family (itself for a run started from scratch; reruns inherit it)."""
    schema_version: str | None = None
    prompt_version: str | None = None
    model_policy: str | None = None
    selection: str | None = None
    """For a rerun: which chunks of the parent it takes (JSON), so it can be resumed."""
    reuse: str | None = None
    """Which earlier answers the run may reuse (JSON ``family.ReuseScope``), kept on resume."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRecord:
        """A record from a ``runs`` view row (timestamps back to epoch seconds)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: _epoch(v) for k, v in row.items() if k in names})


@dataclass(frozen=True, slots=True)
class DocumentRow:
    """What happened to one document in one run (the ``documents`` table).

    ``status`` "error" rows carry a ``reason`` (e.g. ``binary``, ``empty``, ``too_large``)
    and a human ``message``; ``encoding`` and ``note`` describe how text was extracted.
    """

    run_id: str
    doc_id: str
    path: str
    size_bytes: int
    status: DocumentStatus
    reason: str | None = None
    message: str | None = None
    encoding: str | None = None
    note: str | None = None
    chunks: int = 0


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One endpoint's prices as a run counted with them (the ``prices`` table)."""

    run_id: str
    provider: str
    model: str
    region: str
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float
    context_window: int
    max_output_tokens: int
    priced_at: str
    cache_write_per_mtok: float | None = None
    batch_input_per_mtok: float | None = None
    batch_output_per_mtok: float | None = None


def stamped(record: RunRecord) -> RunRecord:
    """A copy of ``record`` with ``updated_at`` set to now when it is 0.

    A copy, so a caller that writes the same object again later gets a fresh time.
    """
    if record.updated_at:
        return dataclasses.replace(record)
    return dataclasses.replace(record, updated_at=time.time())


def _epoch(value: Any) -> Any:
    return value.timestamp() if isinstance(value, datetime) else value
