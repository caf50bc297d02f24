"""Batch jobs a run has submitted or is about to submit, on disk before and after the create.

    intent = JobIntent.new(run_id, endpoint_key, requests)     # not sent yet
    intents.save(intent)                                       # 1. on disk
    job_id = await provider.submit(...)                        # 2. the create call
    intents.save(intent.submitted(job_id))                     # 3. its id, at once
    intents.pending(run_id)                                    # after a kill -9: what to adopt

A provider batch job runs on the vendor's side whatever happens to docroute: the requests
in it will be billed. So the intent (every request's ``custom_id`` = attempt id, its chunk
and its reserved worst case) is written before the create call, and the job id as soon as
it returns. A resumed run reads what is pending (``pending``): a job with an id is polled,
never submitted again; an intent without one is looked for in the vendor's own listing by
its metadata (``docroute_intent``) before anything is resent. Each save replaces the file
atomically (write a temporary file, ``fsync``, ``rename``), so a kill leaves the old or the
new intent, never half of one. The files live under ``<state>/_batch_jobs/<run_id>/``
(``Store.state_dir``: local even for an object-store root, like the journal), and go when
the run's parts hold every request's ledger row (``forget``).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

__all__ = ["INTENT_DIR", "Intents", "JobIntent", "JobRequest"]

INTENT_DIR = "_batch_jobs"


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One request of a job: the attempt it is ledgered as."""

    custom_id: str
    chunk_id: str
    doc_id: str
    attempt: int
    reserved_usd: float
    tokens: int = 0
    """Its prompt estimate and output cap: its weight in the endpoint's TPM if sent sync."""


@dataclass(frozen=True, slots=True)
class JobIntent:
    """A batch job of one run at one endpoint, from before its create call to its end."""

    intent_id: str
    run_id: str
    provider: str
    model: str
    region: str
    requests: tuple[JobRequest, ...]
    created_at: float
    job_id: str | None = None
    submitted_at: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(
        cls, run_id: str, provider: str, model: str, region: str, requests: Sequence[JobRequest]
    ) -> JobIntent:
        intent_id = uuid.uuid4().hex
        now = time.time()
        metadata = {
            "docroute_intent": intent_id,
            "docroute_run": run_id[:64],
            "docroute_submitted_at": str(int(now)),
            "docroute_requests": str(len(requests)),
        }
        return cls(
            intent_id, run_id, provider, model, region, tuple(requests), now, metadata=metadata
        )

    def submitted(self, job_id: str) -> JobIntent:
        return replace(self, job_id=job_id, submitted_at=time.time())

    @property
    def reserved_usd(self) -> float:
        return sum(r.reserved_usd for r in self.requests)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobIntent:
        data = json.loads(text)
        data["requests"] = tuple(JobRequest(**r) for r in data["requests"])
        return cls(**data)


class Intents:
    """The intent files of an output root's state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.base = state_dir / INTENT_DIR

    def save(self, intent: JobIntent) -> None:
        folder = self.base / intent.run_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{intent.intent_id}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(intent.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def pending(self, run_id: str) -> list[JobIntent]:
        """Every intent of ``run_id`` not forgotten yet, oldest first."""
        folder = self.base / run_id
        if not folder.is_dir():
            return []
        found = [JobIntent.from_json(p.read_text("utf-8")) for p in folder.glob("*.json")]
        return sorted(found, key=lambda i: i.created_at)

    def by_run(self) -> dict[str, list[JobIntent]]:
        """Every run's intents not forgotten yet (what ``docroute runs`` tells about)."""
        if not self.base.is_dir():
            return {}
        found = {d.name: self.pending(d.name) for d in sorted(self.base.iterdir()) if d.is_dir()}
        return {run_id: intents for run_id, intents in found.items() if intents}

    def forget(self, intent: JobIntent) -> None:
        (self.base / intent.run_id / f"{intent.intent_id}.json").unlink(missing_ok=True)
