"""Run families: versions and idempotency keys, reused answers, resume state, rerun selection.

A *family* is a run started from scratch and every rerun below it (``family_id`` is the
first run's id). Within a family a chunk's answer is never paid for twice:

    versions = Versions.of(cfg, schema)                  # schema, prompt and model policy
    key = versions.key(chunk.text)                       # the chunk's idempotency key
    reuse = ReuseIndex.load(store, family_id, across_runs=True)  # keys paid for on the root
    reuse.answers(store, [key, ...])                     # {key: committed answer}
    scope = ReuseScope.of(cfg, store)                    # a run's reuse.* resolved, recorded

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
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import Config
from pipeline.config_sections import parse_duration
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
            "SELECT count(*), count(*) FILTER (status = 'error') FROM documents "
            "WHERE run_id = ? AND status <> 'deleted'",
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
            documents=ids("SELECT doc_id FROM documents WHERE run_id = ? AND status <> 'deleted'"),
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
    """A committed answer that a chunk with the same key may reuse (``run_id`` paid for it)."""

    run_id: str
    output: str
    provider: str | None
    model: str | None
    region: str | None


@dataclass(frozen=True, slots=True)
class ReuseScope:
    """Which earlier answers a run may take: decided when the run is opened, recorded with
    it, and kept when it is resumed (a resumed ``--full`` run stays ``--full``)."""

    across_runs: bool = True
    """Any run on the root (else only the run's own family)."""
    since: float | None = None
    """Only answers made at or after this moment (epoch seconds)."""

    @classmethod
    def of(cls, cfg: Config, store: Store, *, now: float | None = None) -> ReuseScope:
        """``cfg.reuse`` resolved: ``max_age`` from ``now``, ``since`` from that run's start
        (the later of the two bounds wins)."""
        r = cfg.reuse
        bounds: list[float] = []
        if r.max_age:
            bounds.append((time.time() if now is None else now) - parse_duration(r.max_age))
        if r.since:
            record = store.latest_run(r.since) if store.has_tables(["runs"]) else None
            if record is None:
                raise ConfigError(
                    f"reuse.since: run {r.since!r} not found under {store.root} "
                    "(see `docroute runs`)"
                )
            bounds.append(record.started_at)
        return cls(across_runs=r.across_runs, since=max(bounds) if bounds else None)

    def to_json(self) -> str:
        return json.dumps({"across_runs": self.across_runs, "since": self.since})

    @classmethod
    def from_json(cls, text: str) -> ReuseScope:
        data: dict[str, Any] = json.loads(text)
        return cls(across_runs=bool(data.get("across_runs", True)), since=data.get("since"))


class ReuseIndex:
    """The idempotency keys of the answers a run may reuse: which run paid for each, and
    in which region it was made.

    Keys are loaded once from the ``answers`` index; an answer is read from the results of
    the run that paid for it, the first time a batch hits that run (then kept in memory,
    up to ``CACHE_BYTES``).
    """

    def __init__(self, family_id: str) -> None:
        self.family_id = family_id
        # key → index of its (paying run, region) in ``_pairs``: few pairs, many keys
        self._keys: dict[str, int] = {}
        self._pairs: list[tuple[str, str | None]] = []
        self._pair_ids: dict[tuple[str, str | None], int] = {}
        self._live: set[str] = set()  # runs whose answers were added by ``add``: not cached
        self._cache: OrderedDict[str, tuple[pa.Table, dict[str, int]]] = OrderedDict()

    @classmethod
    def load(
        cls,
        store: Store,
        family_id: str,
        *,
        across_runs: bool = False,
        since: float | None = None,
    ) -> ReuseIndex:
        """The keys the family paid answers for; with ``across_runs``, every run on the
        root (a key holds every setting that changes the answer, so an equal key is the
        same question), answered at or after ``since`` (epoch seconds) if given. A key
        answered more than once points at its latest answer.

        Reads the ``answers`` index (one small row per paid-for answer), never the runs'
        results: a year of nightly history opens in well under a second.
        """
        if not store.has_tables(["answers"]):
            return cls(family_id)
        params: list[object] = []
        where = ["TRUE"]
        if not across_runs:
            where.append(
                "run_id IN (SELECT run_id FROM runs WHERE coalesce(family_id, run_id) = ?)"
            )
            params.append(family_id)
        if since is not None:
            where.append("finished_at >= to_timestamp(?)")
            params.append(since)
        latest = store.read_arrow(
            # the latest answer of each key (its run and region from the same row)
            f"SELECT idem_key, run_id, region FROM answers WHERE {' AND '.join(where)} "
            "QUALIFY row_number() OVER (PARTITION BY idem_key "
            "ORDER BY finished_at DESC, run_id DESC) = 1",
            params,
        )
        return cls.of_table(family_id, latest)

    @classmethod
    def of_table(cls, family_id: str, table: pa.Table) -> ReuseIndex:
        """An index of ``table``'s ``idem_key``, ``run_id`` and ``region`` columns. Built
        column-wise: each key maps to one of the few (run, region) pairs (a year of nights
        is 400,000 keys and a few hundred pairs)."""
        index = cls(family_id)
        # "run␟region" per row (run ids hold no control characters), then one code per row
        joined = pc.binary_join_element_wise(
            table.column("run_id"), pc.fill_null(table.column("region"), _NO_REGION), "\x1f"
        )
        encoded = pc.dictionary_encode(joined).combine_chunks()
        for text in encoded.dictionary.to_pylist():
            run_id, region = text.split("\x1f")
            index._pairs.append((run_id, None if region == _NO_REGION else region))
        index._pair_ids = {pair: i for i, pair in enumerate(index._pairs)}
        which = encoded.indices.to_pylist()
        keys = table.column("idem_key").to_pylist()
        index._keys = dict(zip(keys, which, strict=True))
        return index

    @classmethod
    def scoped(cls, store: Store, family_id: str, scope: ReuseScope) -> ReuseIndex:
        """The index a run with ``scope`` reuses from."""
        return cls.load(store, family_id, across_runs=scope.across_runs, since=scope.since)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: str, run_id: str, region: str | None) -> None:
        """``run_id`` (the run in progress) has just committed an answer for ``key``."""
        if key not in self._keys:
            pair = (run_id, region)
            if pair not in self._pair_ids:
                self._pair_ids[pair] = len(self._pairs)
                self._pairs.append(pair)
            self._keys[key] = self._pair_ids[pair]
            self._live.add(run_id)
            self._cache.pop(run_id, None)

    def paid_by(self, key: str) -> tuple[str, str | None] | None:
        """(the run that paid for ``key``'s answer, the region it was made in), if any."""
        i = self._keys.get(key)
        return None if i is None else self._pairs[i]

    def reusable(self, key: str, regions: Iterable[str]) -> bool:
        """Whether a chunk with ``key`` that allows ``regions`` may reuse an answer: one
        exists, made in one of those regions (residency is decided tonight)."""
        found = self.paid_by(key)
        return found is not None and found[1] in set(regions)

    def results(
        self,
        store: Store,
        chunks: Sequence[Chunk],
        keys: dict[str, str],
        run_id: str,
        schema_name: str,
    ) -> dict[str, Result]:
        """Succeeded results (cost 0, ``reused_from`` set) for the ``chunks`` whose key has
        an answer already, from a region the chunk still allows."""
        hits = [c for c in chunks if self.reusable(keys[c.chunk_id], c.regions)]
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
        """The committed answers for those of ``keys`` the index has."""
        wanted: dict[str, list[str]] = {}
        for key in set(keys):
            paid = self.paid_by(key)
            if paid is not None:
                wanted.setdefault(paid[0], []).append(key)
        found: dict[str, Reusable] = {}
        for run_id, run_keys in wanted.items():
            if run_id in self._live:  # still being written: read what it has committed
                table = _paid(store, run_id, run_keys)
                rows = _by_key(table)
            else:
                table, rows = self._finished(store, run_id)
            for key in run_keys:
                i = rows.get(key)
                if i is not None:
                    a = {c: table.column(c)[i].as_py() for c in _ANSWER}
                    found[key] = Reusable(
                        run_id, a["output"], a["provider"], a["model"], a["region"]
                    )
        return found

    def _finished(self, store: Store, run_id: str) -> tuple[pa.Table, dict[str, int]]:
        """The answers ``run_id`` paid for, read once and kept while memory allows: a
        night's batches mostly hit the same few runs (the one that paid for an unchanged
        chunk), so each is read once a night instead of once a batch."""
        cached = self._cache.get(run_id)
        if cached is None:
            table = _paid(store, run_id)
            cached = (table, _by_key(table))
            self._cache[run_id] = cached
            while len(self._cache) > 1 and self._cached_bytes() > CACHE_BYTES:
                self._cache.popitem(last=False)  # the least recently used run goes
        self._cache.move_to_end(run_id)
        return cached

    def _cached_bytes(self) -> int:
        return sum(table.nbytes for table, _ in self._cache.values())


#: ``region`` of an answer made nowhere in particular (the ``of_table`` encoding only).
_NO_REGION = "\x00"
#: The columns of a paid answer ``ReuseIndex.answers`` reads (after its key).
_ANSWER = ("idem_key", "output", "provider", "model", "region")
#: How much of the runs' answers ``ReuseIndex`` keeps in memory between batches.
CACHE_BYTES = 256 * 2**20


def _by_key(table: pa.Table) -> dict[str, int]:
    """Each ``idem_key`` of ``table`` → its row."""
    keys = table.column("idem_key").to_pylist()
    return dict(zip(keys, range(len(keys)), strict=True))


def _paid(store: Store, run_id: str, keys: Sequence[str] | None = None) -> pa.Table:
    """Run ``run_id``'s paid-for answers (of ``keys``, if given) from its folder alone."""
    where = (
        (pc.field("status") == "succeeded")
        & pc.field("reused_from").is_null()
        & pc.field("output").is_valid()
    )
    if keys is not None:
        where &= pc.field("idem_key").isin(keys)
    return store.read_run("results", run_id, where).select(list(_ANSWER))


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
    "ReuseScope",
    "Selection",
    "Versions",
]
