"""What earlier runs say about the next one: per-chunk figures and answer sizes from the ledger.

    past = history(cfg, "chunk_summary")          # over all endpoints, and per endpoint
    past.overall.source                           # "history" (or "default": no earlier run)
    past.for_endpoint("openai/gpt-4o-mini").attempts_per_chunk      # 1.08
    sizes = answer_sizes(cfg, "chunk_summary")    # AnswerSizes(answers=240, p90=310.0, ...)
    output_room_warning(cfg, get_schema("chunk_summary"), sizes)    # None, or what to raise

``docroute plan`` (``pipeline.plan``) prices each chunk with ``A`` attempts per chunk, ``o``
output tokens per attempt and an input ratio (see its docstring). They come from the ledger
when earlier runs of the same schema are under ``output.root`` (``HISTORY_RUNS`` most
recent): ``A`` = billed attempts (those with tokens: repairs, reroutes, failed attempts) per
succeeded chunk, ``o`` = mean output tokens per billed attempt, input ratio = billed input
tokens / the prompt estimates of those attempts' chunks (tokenizer differences, repair
prompts). Without history: ``A`` = 1, ``o`` = ``DEFAULT_OUTPUT_FRACTION`` of
``task.max_output_tokens``, ratio 1. The ``Basis`` says which it used (``source``). An
endpoint with at least ``MIN_ENDPOINT_HISTORY`` succeeded chunks gets its own figures.

``output_room_warning`` warns when ``task.max_output_tokens`` leaves too little room for the
schema's answers (an answer longer than the limit is cut off and paid for anyway): after
answers were cut off in the latest runs, until the limit is twice what they got; else below
1.25× the p90 of the latest runs' valid answers (once there are ``MIN_SIZE_HISTORY``); else,
without history, below twice the tokens of the schema's example answer.

Everything here reads only: an output root without a ledger is not created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import Config
from pipeline.policy import Endpoint, endpoints_from_config
from pipeline.store import Store
from pipeline.tokens import get_counter
from pipeline.validation import first_messages, prompt_token_estimate
from schemas import SchemaSpec, get_schema

__all__ = [
    "DEFAULT_OUTPUT_FRACTION",
    "HISTORY_RUNS",
    "AnswerSizes",
    "Basis",
    "History",
    "answer_sizes",
    "history",
    "output_room_warning",
]

#: Without history, an answer is assumed to use this share of ``task.max_output_tokens``.
DEFAULT_OUTPUT_FRACTION = 0.25
#: How many of the latest runs of the same schema the history is taken from.
HISTORY_RUNS = 10
#: Succeeded chunks an endpoint needs in the history for its own figures to be used.
MIN_ENDPOINT_HISTORY = 10
#: Valid answers the history needs before their sizes replace the schema's example.
MIN_SIZE_HISTORY = 20
#: ``task.max_output_tokens`` should be at least this many times the p90 of past answers,
ROOM_OVER_P90 = 1.25
#: ... this many times the schema's example answer (long chunks give longer answers),
ROOM_OVER_EXAMPLE = 2.0
#: ... and, after answers were cut off, this many times what they got before the cut.
ROOM_AFTER_TRUNCATION = 2.0


@dataclass(frozen=True, slots=True)
class Basis:
    """Where the per-chunk figures come from."""

    source: Literal["history", "default"]
    attempts_per_chunk: float
    output_tokens_per_attempt: float
    input_ratio: float
    price_ratio: float = 1.0
    """Actual cost / the same tokens at the first endpoint's prices (reroutes to dearer
    endpoints make it > 1)."""
    runs: int = 0
    succeeded_chunks: int = 0
    billed_attempts: int = 0

    def describe(self) -> str:
        figures = (
            f"{self.output_tokens_per_attempt:,.0f} output tokens per attempt, "
            f"{self.attempts_per_chunk:.2f} attempts per chunk, input × {self.input_ratio:.2f}, "
            f"price × {self.price_ratio:.2f}"
        )
        if self.source == "default":
            return (
                f"{figures}: no history, defaults ({DEFAULT_OUTPUT_FRACTION:.0%} of "
                "task.max_output_tokens, one attempt)"
            )
        return (
            f"{figures}: from history ({self.billed_attempts} billed attempts for "
            f"{self.succeeded_chunks} succeeded chunks in {self.runs} earlier run(s))"
        )


@dataclass(frozen=True, slots=True)
class History:
    """The figures over all endpoints, and per first endpoint (``provider/model``)."""

    overall: Basis
    by_endpoint: dict[str, Basis] = field(default_factory=dict)

    def for_endpoint(self, key: str) -> Basis:
        found = self.by_endpoint.get(key)
        return found if found and found.succeeded_chunks >= MIN_ENDPOINT_HISTORY else self.overall


def history(cfg: Config, schema_name: str) -> History:
    """The per-chunk figures from earlier runs' ledger (see the module docstring), or the
    defaults. Reads only; an output root without a ledger is not created."""
    default = Basis(
        source="default",
        attempts_per_chunk=1.0,
        output_tokens_per_attempt=DEFAULT_OUTPUT_FRACTION * cfg.task.max_output_tokens,
        input_ratio=1.0,
    )
    store = Store(cfg.output.root)
    if not store.has_tables(("ledger", "results", "chunks")):
        return History(default)
    rows = store.read(_HISTORY_SQL, [schema_name, HISTORY_RUNS]).rows
    overhead = prompt_token_estimate(first_messages(_instructions(cfg), ""), 0)
    prices = {e.key: e for e in endpoints_from_config(cfg)}
    by_endpoint: dict[str, Basis] = {}
    totals = _Tally()
    for key, *figures in rows:
        tally = _Tally(*figures)
        totals.add(tally, prices.get(key))
        basis = tally.basis(overhead, prices.get(key))
        if basis is not None:
            by_endpoint[key] = basis
    return History(totals.basis(overhead, None) or default, by_endpoint)


@dataclass(slots=True)
class _Tally:
    runs: int = 0
    succeeded: int = 0
    billed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    chunk_tokens: int = 0  # the chunks' token estimates, once per billed attempt
    nominal_usd: float = 0.0  # the same tokens at the first endpoint's prices

    def add(self, other: _Tally, e: Endpoint | None) -> None:
        self.runs = max(self.runs, other.runs)
        self.succeeded += other.succeeded
        self.billed += other.billed
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        self.chunk_tokens += other.chunk_tokens
        self.nominal_usd += other.nominal(e)

    def nominal(self, e: Endpoint | None) -> float:
        if e is None:
            return self.cost_usd  # an endpoint no longer configured: taken at its cost
        p = e.price
        return (self.input_tokens * p.input_per_mtok + self.output_tokens * p.output_per_mtok) / 1e6

    def basis(self, overhead: int, e: Endpoint | None) -> Basis | None:
        if not self.succeeded or not self.billed:
            return None
        nominal = self.nominal_usd or self.nominal(e)
        return Basis(
            source="history",
            attempts_per_chunk=self.billed / self.succeeded,
            output_tokens_per_attempt=self.output_tokens / self.billed,
            input_ratio=self.input_tokens / (self.chunk_tokens + overhead * self.billed),
            price_ratio=self.cost_usd / nominal if nominal else 1.0,
            runs=self.runs,
            succeeded_chunks=self.succeeded,
            billed_attempts=self.billed,
        )


@dataclass(frozen=True, slots=True)
class AnswerSizes:
    """Output tokens of the schema's answers in the latest runs' ledger."""

    answers: int = 0  # valid answers (outcome ok)
    p90: float = 0.0
    truncated: int = 0  # answers cut off at the output limit (output_truncated)
    truncated_at: int = 0  # the most output tokens such an answer got


def answer_sizes(cfg: Config, schema_name: str) -> AnswerSizes:
    """How long answers of ``schema_name`` were in the latest runs (reads only)."""
    store = Store(cfg.output.root)
    if not store.has_tables(("ledger", "results")):
        return AnswerSizes()
    answers, p90, truncated, truncated_at = store.read(
        _SIZES_SQL, [schema_name, HISTORY_RUNS]
    ).rows[0]
    return AnswerSizes(int(answers), float(p90 or 0), int(truncated), int(truncated_at or 0))


def output_room_warning(cfg: Config, schema: SchemaSpec, seen: AnswerSizes) -> str | None:
    """A warning when ``task.max_output_tokens`` leaves too little room for the schema's
    answers: from the ledger's answers once there are enough, else from the schema's example.
    An answer longer than the limit is cut off and paid for anyway (``output_truncated``)."""
    limit = cfg.task.max_output_tokens
    if seen.truncated and limit <= ROOM_AFTER_TRUNCATION * seen.truncated_at:
        need = ROOM_AFTER_TRUNCATION * seen.truncated_at
        why = (
            f"{seen.truncated} answer(s) in the latest runs were cut off at about "
            f"{seen.truncated_at:,} tokens"
        )
    elif seen.answers >= MIN_SIZE_HISTORY:
        need = ROOM_OVER_P90 * seen.p90
        why = (
            f"the longest 10% of {seen.answers:,} answers in the latest runs used {seen.p90:,.0f}+"
        )
    elif schema.example:
        typical = get_counter(cfg.chunking.counter).count(schema.example)
        need = ROOM_OVER_EXAMPLE * typical
        why = f"a typical {schema.name} answer (the schema's example) is about {typical:,} tokens"
    else:
        return None
    if limit >= need:
        return None
    suggest = -(-int(need) // 64) * 64
    return (
        f"task.max_output_tokens is {limit:,}, but {why}: longer answers are cut off and still "
        f"paid for (output_truncated); raise it to at least {suggest:,}"
    )


def _instructions(cfg: Config) -> str:
    return cfg.task.instructions or get_schema(cfg.task.schema_name).instructions


# Per first endpoint (the one a chunk's first attempt went to), over the latest runs of a
# schema: runs, succeeded chunks, billed attempts (tokens reported), their tokens and cost,
# and the token estimates of their chunks (once per billed attempt).
_HISTORY_SQL = """
WITH recent AS (
    SELECT run_id FROM results WHERE schema_name = ?
    GROUP BY run_id ORDER BY run_id DESC LIMIT ?
),
attempt AS (
    SELECT run_id, chunk_id, input_tokens, output_tokens, cost_usd,
           first_value(provider || '/' || model)
               OVER (PARTITION BY run_id, chunk_id ORDER BY attempt, started_at) AS first_endpoint
    FROM ledger
    WHERE run_id IN (SELECT run_id FROM recent) AND provider IS NOT NULL
          AND outcome <> 'interrupted'
),
per_chunk AS (
    SELECT run_id, chunk_id, any_value(first_endpoint) AS first_endpoint,
           count(*) FILTER (WHERE input_tokens > 0 OR output_tokens > 0) AS billed,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(cost_usd) AS cost_usd
    FROM attempt GROUP BY run_id, chunk_id
),
chunk AS (
    SELECT DISTINCT run_id, chunk_id, token_estimate FROM chunks
    WHERE run_id IN (SELECT run_id FROM recent)
),
status AS (
    SELECT DISTINCT run_id, chunk_id, status FROM results
    WHERE run_id IN (SELECT run_id FROM recent)
)
SELECT p.first_endpoint,
       count(DISTINCT p.run_id),
       count(*) FILTER (WHERE s.status = 'succeeded'),
       sum(p.billed),
       sum(p.input_tokens),
       sum(p.output_tokens),
       sum(p.cost_usd),
       sum(c.token_estimate * p.billed)
FROM per_chunk p
JOIN chunk c ON c.run_id = p.run_id AND c.chunk_id = p.chunk_id
LEFT JOIN status s ON s.run_id = p.run_id AND s.chunk_id = p.chunk_id
GROUP BY p.first_endpoint
"""


# Over the latest runs of a schema: valid answers, their p90 output tokens, and the answers
# cut off at the output limit with the most output tokens one of them got.
_SIZES_SQL = """
WITH recent AS (
    SELECT run_id FROM results WHERE schema_name = ?
    GROUP BY run_id ORDER BY run_id DESC LIMIT ?
)
SELECT count(*) FILTER (WHERE outcome = 'ok'),
       quantile_cont(output_tokens, 0.9) FILTER (WHERE outcome = 'ok'),
       count(*) FILTER (WHERE outcome = 'output_truncated'),
       max(output_tokens) FILTER (WHERE outcome = 'output_truncated')
FROM ledger WHERE run_id IN (SELECT run_id FROM recent) AND provider IS NOT NULL
"""
