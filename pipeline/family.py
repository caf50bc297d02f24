"""Run families: versions and idempotency keys, reused answers, resume state, rerun selection.

A *family* is a run started from scratch and every rerun below it (``family_id`` is the
first run's id). Within a family a chunk's answer is never paid for twice:

    versions = Versions.of(cfg, schema)                  # schema, prompt and model policy
    key = versions.key(chunk.text)                       # the chunk's idempotency key
    reuse = ReuseIndex.load(store, family_id)            # succeeded keys of the family
    reuse.answers(store, [key, ...])                     # {key: committed answer}

and a run that was interrupted continues where it stopped:

    prior = Prior.load(store, run_id)       # rows already committed by earlier attempts
    prior.done                              # chunk ids with a committed result: skipped
    prior.spent_usd                         # ledger cost so far: counted against the cap

Which run a command opens (new, resumed, a rerun) is decided in ``pipeline.opening``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.models import Chunk, Result
from pipeline.store import RunRecord, Store
from schemas import SchemaSpec

#: Statuses ``docroute rerun --status`` may select.
RERUN_STATUSES = ("failed", "skipped", "succeeded")


def _digest(*parts: str, size: int = 16) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\x1f")  # unit separator: ("ab", "c") and ("a", "bc") differ
    return h.hexdigest()[:size]


@dataclass(frozen=True, slots=True)
class Versions:
    """What makes two answers to the same text interchangeable.

    ``schema_version`` comes from the schema's spec; ``prompt_version`` hashes the
    instructions actually sent; ``model_policy`` hashes the routing strategy, the
    endpoints and models offered, and the answer limits. A chunk's idempotency key hashes
    these with the chunk's text.
    """

    schema_name: str
    schema_version: str
    prompt_version: str
    model_policy: str

    @classmethod
    def of(cls, cfg: Config, schema: SchemaSpec) -> Versions:
        instructions = cfg.task.instructions or schema.instructions
        endpoints = sorted(f"{p.name}/{m.id}@{p.region}" for p in cfg.providers for m in p.models)
        fields: dict[str, object] = {
            "strategy": cfg.routing.strategy,
            "endpoints": endpoints,
            "max_output_tokens": cfg.task.max_output_tokens,
            "temperature": cfg.task.temperature,
        }
        if cfg.routing.cascade is not None:
            # What makes a cascade answer good enough changes which answer is kept. (Only
            # when set, so the keys of every other config stay what they were.)
            fields["cascade"] = cfg.routing.cascade.model_dump(mode="json")
        policy = json.dumps(fields, sort_keys=True)
        return cls(
            schema_name=schema.name,
            schema_version=schema.version,
            prompt_version=_digest(instructions, size=12),
            model_policy=_digest(policy, size=12),
        )

    def key(self, text: str) -> str:
        """The idempotency key of a chunk with this ``text`` under these versions."""
        content = hashlib.sha256(text.encode()).hexdigest()
        return _digest(
            content,
            self.schema_name,
            self.schema_version,
            self.prompt_version,
            self.model_policy,
            size=32,
        )

    def differences(self, record: RunRecord) -> list[str]:
        """How ``record``'s schema and prompt differ from these (empty: the same)."""
        out = []
        if record.schema_name != self.schema_name or (
            record.schema_version is not None and record.schema_version != self.schema_version
        ):
            out.append(
                f"schema {record.schema_name} v{record.schema_version} → "
                f"{self.schema_name} v{self.schema_version}"
            )
        if record.prompt_version is not None and record.prompt_version != self.prompt_version:
            out.append(f"prompt version {record.prompt_version} → {self.prompt_version}")
        return out


@dataclass(slots=True)
class Prior:
    """What earlier attempts of the same run id committed (all empty for a new run)."""

    documents: set[str] = field(default_factory=set)
    chunks: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    document_errors: int = 0
    spent_usd: float = 0.0
    spent_by_document: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, store: Store, run_id: str) -> Prior:
        def ids(sql: str) -> set[str]:
            return {row[0] for row in store.read(sql, [run_id]).rows}

        docs = store.read(
            "SELECT count(*), count(*) FILTER (status = 'error') FROM documents WHERE run_id = ?",
            [run_id],
        ).rows[0]
        counts = store.read(
            "SELECT status, count(*) FROM results WHERE run_id = ? GROUP BY 1", [run_id]
        ).rows
        spent = store.read(
            "SELECT coalesce(sum(cost_usd), 0) FROM ledger WHERE run_id = ?", [run_id]
        ).rows[0][0]
        by_document = store.read(
            "SELECT c.doc_id, sum(l.cost_usd) FROM ledger l JOIN chunks c "
            "ON c.run_id = l.run_id AND c.chunk_id = l.chunk_id WHERE l.run_id = ? GROUP BY 1",
            [run_id],
        ).rows
        prior = cls(
            spent_by_document={doc: float(usd) for doc, usd in by_document},
            documents=ids("SELECT doc_id FROM documents WHERE run_id = ?"),
            chunks=ids("SELECT chunk_id FROM chunks WHERE run_id = ?"),
            done=ids("SELECT chunk_id FROM results WHERE run_id = ?"),
            counts={status: n for status, n in counts},
            document_errors=int(docs[1]),
            spent_usd=float(spent),
        )
        if len(prior.documents) != docs[0]:
            raise ConfigError(f"run {run_id} has duplicate document rows; see `docroute audit`")
        return prior


@dataclass(frozen=True, slots=True)
class Reusable:
    """A committed, succeeded answer of the family that a chunk with the same key may reuse."""

    run_id: str
    output: str
    provider: str | None
    model: str | None
    region: str | None


class ReuseIndex:
    """The idempotency keys of the family's succeeded results, and where they are.

    Only keys are held in memory; answers are read per batch for the keys that hit.
    """

    def __init__(self, family_id: str, keys: dict[str, str] | None = None) -> None:
        self.family_id = family_id
        self._keys: dict[str, str] = dict(keys or {})

    @classmethod
    def load(
        cls,
        store: Store,
        family_id: str,
        *,
        across_runs: bool = False,
        since: float | None = None,
    ) -> ReuseIndex:
        """The keys of the family's succeeded results; with ``across_runs``, of every run
        on the root (a key holds every setting that changes the answer, so an equal key is
        the same question), answered at or after ``since`` (epoch seconds) if given. A key
        answered more than once points at its latest answer."""
        params: list[object]
        if across_runs:
            where, params = "TRUE", []
        else:
            where, params = "coalesce(u.family_id, u.run_id) = ?", [family_id]
        if since is not None:
            where += " AND r.finished_at >= to_timestamp(?)"
            params.append(since)
        rows = store.read(
            "SELECT r.idem_key, arg_max(r.run_id, r.finished_at) FROM results r "
            f"JOIN runs u USING (run_id) WHERE {where} AND r.status = 'succeeded' "
            "AND r.idem_key IS NOT NULL AND r.output IS NOT NULL GROUP BY 1",
            params,
        ).rows
        return cls(family_id, {key: run_id for key, run_id in rows})

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: str, run_id: str) -> None:
        self._keys.setdefault(key, run_id)

    def results(
        self,
        store: Store,
        chunks: Sequence[Chunk],
        keys: dict[str, str],
        run_id: str,
        schema_name: str,
    ) -> dict[str, Result]:
        """Succeeded results (cost 0, ``reused_from`` set) for the ``chunks`` whose key the
        family answered already, from a region the chunk still allows."""
        hits = [c for c in chunks if keys[c.chunk_id] in self._keys]
        if not hits:
            return {}
        answers = self.answers(store, (keys[c.chunk_id] for c in hits))
        out: dict[str, Result] = {}
        now = time.time()
        for chunk in hits:
            found = answers.get(keys[chunk.chunk_id])
            if found is None or found.region not in chunk.regions:
                continue  # residency has tightened since: ask again, within today's rules
            out[chunk.chunk_id] = Result(
                run_id=run_id,
                chunk_id=chunk.chunk_id,
                doc_id=chunk.doc_id,
                path=chunk.path,
                status="succeeded",
                reason=None,
                output=found.output,
                provider=found.provider,
                model=found.model,
                region=found.region,
                attempts=0,
                cost_usd=0.0,
                finished_at=now,
                schema_name=schema_name,
                idem_key=keys[chunk.chunk_id],
                reused_from=found.run_id,
            )
        return out

    def answers(self, store: Store, keys: Iterable[str]) -> dict[str, Reusable]:
        """The committed answers for those of ``keys`` the family has."""
        wanted: dict[str, list[str]] = {}
        for key in set(keys):
            run_id = self._keys.get(key)
            if run_id is not None:
                wanted.setdefault(run_id, []).append(key)
        found: dict[str, Reusable] = {}
        for run_id, run_keys in wanted.items():
            marks = ", ".join("?" for _ in run_keys)
            # ``reused_from`` names the run that paid for the answer, however often reused
            rows = store.read(
                "SELECT idem_key, output, provider, model, region, coalesce(reused_from, run_id) "
                f"FROM results WHERE run_id = ? AND status = 'succeeded' AND idem_key IN ({marks})",
                [run_id, *run_keys],
            ).rows
            for key, output, provider, model, region, origin in rows:
                found[key] = Reusable(origin, output, provider, model, region)
        return found


@dataclass(frozen=True, slots=True)
class Selection:
    """Which chunks of a parent run a rerun takes (recorded with the child, for resuming)."""

    parent_run_id: str
    statuses: tuple[str, ...] = ("failed", "skipped")
    reasons: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "parent_run_id": self.parent_run_id,
                "statuses": list(self.statuses),
                "reasons": list(self.reasons),
                "providers": list(self.providers),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Selection:
        data: dict[str, Any] = json.loads(text)
        return cls(
            parent_run_id=data["parent_run_id"],
            statuses=tuple(data.get("statuses") or ("failed", "skipped")),
            reasons=tuple(data.get("reasons") or ()),
            providers=tuple(data.get("providers") or ()),
        )

    def sql(self) -> tuple[str, list[Any]]:
        """The WHERE clause (over ``chunks c`` joined to ``results r``) and its parameters."""
        bad = [s for s in self.statuses if s not in RERUN_STATUSES]
        if bad:
            raise ConfigError(f"unknown status {bad[0]!r}; expected one of {RERUN_STATUSES}")
        where = [f"r.status IN ({_marks(self.statuses)})"]
        params: list[Any] = [*self.statuses]
        if self.reasons:
            where.append(f"r.reason IN ({_marks(self.reasons)})")
            params += self.reasons
        if self.providers:
            where.append(
                "EXISTS (SELECT 1 FROM ledger l WHERE l.run_id = r.run_id "
                f"AND l.chunk_id = r.chunk_id AND l.provider IN ({_marks(self.providers)}))"
            )
            params += self.providers
        return " AND ".join(where), params


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


__all__ = [
    "RERUN_STATUSES",
    "Prior",
    "Reusable",
    "ReuseIndex",
    "Selection",
    "Versions",
]
