"""``docroute audit RUN_ID``: check a run's promises from the stored data alone.

    report = audit(Store(root), "20261121-020000-3f9a1c")
    print(report.text())          # one line per check, then the verdict
    report.ok                     # False on any breach (the command exits 1)

Checks, each over the Parquet parts (nothing is taken from the running code):

- ``residency``: no attempt went to an endpoint outside the chunk's allowed regions;
- ``reused_in_region``: every answer the run reused from an earlier run was made in a
  region the chunk allows tonight (residency is decided again each night);
- ``budget``: the run's ledger total is within the budget its record states;
- ``one_result_per_chunk``: every chunk has exactly one result, no result lacks a chunk,
  no chunk is stored twice;
- ``ledger_unique``: no attempt is recorded twice (``attempt_id``);
- ``cost_matches_prices``: every attempt's cost equals its tokens × the prices the run
  recorded for that endpoint (the ``prices`` table; a batch job's request, ``mode`` =
  ``batch``, at its batch prices), to a millionth of a cent; an attempt booked at its worst
  case (``worst_case_sql``) costs what was reserved for it;
- ``worst_case``: how much of the spend is booked at the reserved worst case rather than
  at reported usage: calls in flight when the process died or the run was stopped
  (``interrupted``), calls whose outcome is unknown after the request left (``uncertain``:
  timeouts, cut connections, unreadable answers) and adapter failures without an answer
  (``internal_error``). The provider may have billed less; the ledger never counts less.
  Always ``ok``: it is what a finance owner reconciles against the vendor's invoice;
- ``batch``: how many attempts were requests of provider batch jobs, what they cost and
  what the same answers would have cost at the sync prices (always ``ok``; informative);
- ``parts_whole``: no part of the run is damaged (truncated files are moved to
  ``_quarantine/`` by the store and listed here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError
from pipeline.store import Store


def worst_case_sql(table: str = "") -> str:
    """SQL true for ledger rows booked at their reserved worst case (``cost_usd =
    reserved_usd``) rather than at reported usage; ``table`` qualifies the columns."""
    t = f"{table}." if table else ""
    return (
        f"({t}outcome IN ('interrupted', 'uncertain') OR ({t}outcome = 'internal_error' "
        f"AND {t}provider IS NOT NULL AND {t}input_tokens = 0 AND {t}output_tokens = 0))"
    )


#: Absolute tolerance when recomputing a cost (USD): float sums, not policy.
COST_TOLERANCE_USD = 1e-8
_SHOWN = 5


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class AuditReport:
    run_id: str
    status: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def text(self) -> str:
        lines = [f"audit of run {self.run_id} ({self.status})"]
        for c in self.checks:
            lines.append(f"  {'ok    ' if c.ok else 'BREACH'}  {c.name:<22} {c.detail}")
            for example in c.examples[:_SHOWN]:
                lines.append("          " + ", ".join(f"{k}={v}" for k, v in example.items()))
        verdict = "PASS: every promise holds" if self.ok else "FAIL: see the breaches above"
        lines.append(f"verdict: {verdict}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "ok": self.ok,
            "checks": [
                {"name": c.name, "ok": c.ok, "detail": c.detail, "examples": c.examples}
                for c in self.checks
            ],
        }


def audit(store: Store, run_id: str) -> AuditReport:
    """Check run ``run_id`` (raises ``ConfigError`` if the store has no such run)."""
    record = store.latest_run(run_id)
    if record is None:
        raise ConfigError(f"run {run_id!r} not found under {store.root} (see `docroute runs`)")
    checks = [
        _parts(store, run_id),
        _residency(store, run_id),
        _reused_in_region(store, run_id),
        _budget(store, run_id, record.budget_usd),
        _one_result(store, run_id),
        _ledger_unique(store, run_id),
        _costs(store, run_id),
        _worst_case(store, run_id),
        _batched(store, run_id),
    ]
    return AuditReport(run_id=run_id, status=record.status, checks=checks)


def _rows(store: Store, sql: str, run_id: str) -> list[dict[str, Any]]:
    return store.read(sql, [run_id]).to_dicts()


def _parts(store: Store, run_id: str) -> Check:
    store.quarantine_damaged()
    damaged = [p for p in store.quarantined() if len(p.parts) > 2 and p.parts[2] == run_id]
    damaged += [p for p in store.damaged_parts() if len(p.parts) > 1 and p.parts[1] == run_id]
    if not damaged:
        return Check("parts_whole", True, "every part of the run is a whole Parquet file")
    return Check(
        "parts_whole",
        False,
        f"{len(damaged)} damaged part(s) moved aside; their rows are missing from the run",
        [{"part": str(p)} for p in damaged],
    )


def _residency(store: Store, run_id: str) -> Check:
    bad = _rows(
        store,
        "SELECT l.chunk_id, l.attempt, l.provider, l.region, c.regions FROM ledger l "
        "LEFT JOIN chunks c ON c.run_id = l.run_id AND c.chunk_id = l.chunk_id "
        "WHERE l.run_id = ? AND l.provider IS NOT NULL "
        "AND (c.chunk_id IS NULL OR NOT list_contains(c.regions, l.region))",
        run_id,
    )
    calls = store.read(
        "SELECT count(*) FROM ledger WHERE run_id = ? AND provider IS NOT NULL", [run_id]
    ).rows[0][0]
    if not bad:
        return Check("residency", True, f"{calls} attempt(s), all inside their chunk's regions")
    return Check(
        "residency", False, f"{len(bad)} attempt(s) outside the chunk's allowed regions", bad
    )


def _reused_in_region(store: Store, run_id: str) -> Check:
    bad = _rows(
        store,
        "SELECT r.chunk_id, r.path, r.region, r.reused_from, c.regions FROM results r "
        "JOIN chunks c USING (run_id, chunk_id) WHERE r.run_id = ? AND r.reused_from IS NOT NULL "
        "AND (r.region IS NULL OR NOT list_contains(c.regions, r.region))",
        run_id,
    )
    n = store.read(
        "SELECT count(*) FROM results WHERE run_id = ? AND reused_from IS NOT NULL", [run_id]
    ).rows[0][0]
    if not bad:
        detail = (
            f"{n} reused answer(s), each made in a region its chunk allows"
            if n
            else ("no answer reused from an earlier run")
        )
        return Check("reused_in_region", True, detail)
    return Check(
        "reused_in_region", False, f"{len(bad)} answer(s) reused from a region not allowed", bad
    )


def _budget(store: Store, run_id: str, cap: float) -> Check:
    spent = store.read(
        "SELECT coalesce(sum(cost_usd), 0) FROM ledger WHERE run_id = ?", [run_id]
    ).rows[0][0]
    share = 100 * spent / cap if cap else 0.0
    detail = f"spent ${spent:.6f} of ${cap:.2f} ({share:.1f}%)"
    return Check("budget", spent <= cap + COST_TOLERANCE_USD, detail)


def _one_result(store: Store, run_id: str) -> Check:
    bad = _rows(
        store,
        "WITH c AS (SELECT chunk_id, count(*) AS stored FROM chunks WHERE run_id = $1 GROUP BY 1), "
        "r AS (SELECT chunk_id, count(*) AS results FROM results WHERE run_id = $1 GROUP BY 1) "
        "SELECT chunk_id, coalesce(stored, 0) AS stored, coalesce(results, 0) AS results "
        "FROM c FULL JOIN r USING (chunk_id) "
        "WHERE coalesce(stored, 0) <> 1 OR coalesce(results, 0) <> 1 ORDER BY chunk_id",
        run_id,
    )
    chunks = store.read("SELECT count(*) FROM chunks WHERE run_id = ?", [run_id]).rows[0][0]
    if not bad:
        return Check("one_result_per_chunk", True, f"{chunks} chunk(s), one result each")
    return Check(
        "one_result_per_chunk",
        False,
        f"{len(bad)} chunk(s) without exactly one stored row and one result",
        bad,
    )


def _ledger_unique(store: Store, run_id: str) -> Check:
    bad = _rows(
        store,
        "SELECT attempt_id, count(*) AS copies FROM ledger WHERE run_id = ? "
        "AND attempt_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1",
        run_id,
    )
    if not bad:
        return Check("ledger_unique", True, "no attempt recorded twice")
    return Check("ledger_unique", False, f"{len(bad)} attempt(s) recorded more than once", bad)


def _costs(store: Store, run_id: str) -> Check:
    priced = store.read("SELECT count(*) FROM prices WHERE run_id = ?", [run_id]).rows[0][0]
    if not priced:
        return Check(
            "cost_matches_prices",
            False,
            "the run recorded no price table (written by a docroute before prices were kept)",
        )
    # An attempt matches if some price row the run recorded for its endpoint gives its cost.
    bad = _rows(
        store,
        "WITH recomputed AS ("
        " SELECT l.attempt_id, l.chunk_id, l.provider, l.model, l.cost_usd, min(abs(l.cost_usd - ("
        f"  CASE WHEN {worst_case_sql('l')} "
        "THEN l.reserved_usd * 1e6 ELSE"
        f"  {_priced_sql(batch='l.mode = ' + repr('batch'))} END) / 1e6)) AS off_by"
        " FROM ledger l LEFT JOIN prices p"
        "  ON p.run_id = l.run_id AND p.provider = l.provider AND p.model = l.model"
        " WHERE l.run_id = ? AND l.provider IS NOT NULL GROUP BY ALL)"
        f" SELECT * FROM recomputed WHERE off_by IS NULL OR off_by > {COST_TOLERANCE_USD}",
        run_id,
    )
    if not bad:
        return Check("cost_matches_prices", True, "every attempt's cost = tokens × its prices")
    return Check(
        "cost_matches_prices",
        False,
        f"{len(bad)} attempt(s) whose cost differs from tokens × the recorded prices",
        bad,
    )


def _priced_sql(batch: str) -> str:
    """SQL of ``l``'s tokens × ``p``'s prices in micro-USD; at the batch prices where the
    condition ``batch`` holds (cached input and cache writes get the input's discount)."""
    rate = f"CASE WHEN {batch} THEN p.batch_input_per_mtok / nullif(p.input_per_mtok, 0) ELSE 1 END"
    return (
        "(greatest(l.input_tokens - l.cached_input_tokens - l.cache_write_tokens, 0)"
        "   * p.input_per_mtok"
        "  + l.cached_input_tokens * p.cached_input_per_mtok"
        "  + l.cache_write_tokens * coalesce(p.cache_write_per_mtok, p.input_per_mtok)) * "
        f"coalesce({rate}, 1)"
        f"  + l.output_tokens * CASE WHEN {batch} THEN p.batch_output_per_mtok"
        "   ELSE p.output_per_mtok END"
    )


def batch_savings(store: Store, run_id: str) -> dict[str, float | int]:
    """The run's batch requests: how many, how many answered, what they cost and what the
    same answers would have cost at the sync prices (the run's own price table)."""
    row = store.read(
        "SELECT count(*), count(*) FILTER (WHERE l.outcome <> 'batch_unfinished'"
        f" AND NOT {worst_case_sql('l')}),"
        " coalesce(sum(l.cost_usd), 0),"
        f" coalesce(sum(CASE WHEN {worst_case_sql('l')} THEN l.cost_usd"
        f"  ELSE ({_priced_sql(batch='false')}) / 1e6 END), 0)"
        " FROM ledger l LEFT JOIN prices p"
        "  ON p.run_id = l.run_id AND p.provider = l.provider AND p.model = l.model"
        " WHERE l.run_id = ? AND l.mode = 'batch'",
        [run_id],
    ).rows[0]
    requests, answered, cost, at_sync = int(row[0]), int(row[1]), float(row[2]), float(row[3])
    return {
        "requests": requests,
        "answered": answered,
        "cost_usd": cost,
        "sync_cost_usd": at_sync,
        "saved_usd": max(at_sync - cost, 0.0),
    }


def worst_case_spend(store: Store, run_id: str) -> tuple[float, dict[str, int]]:
    """The run's spend booked at reserved worst cases, and how many such rows per outcome."""
    rows = store.read(
        "SELECT outcome, count(*), coalesce(sum(cost_usd), 0) FROM ledger "
        f"WHERE run_id = ? AND {worst_case_sql()} GROUP BY 1 ORDER BY 1",
        [run_id],
    ).rows
    return float(sum(r[2] for r in rows)), {r[0]: int(r[1]) for r in rows}


def _batched(store: Store, run_id: str) -> Check:
    b = batch_savings(store, run_id)
    if not b["requests"]:
        return Check("batch", True, "no attempt went through a provider batch job")
    detail = (
        f"{b['requests']} attempt(s) in batch jobs ({b['answered']} answered) cost "
        f"${b['cost_usd']:.6f}; at the sync prices ${b['sync_cost_usd']:.6f}: "
        f"${b['saved_usd']:.6f} saved"
    )
    return Check("batch", True, detail)


def _worst_case(store: Store, run_id: str) -> Check:
    booked, counts = worst_case_spend(store, run_id)
    if not counts:
        return Check("worst_case", True, "every attempt is booked at its reported usage")
    spent = store.read(
        "SELECT coalesce(sum(cost_usd), 0) FROM ledger WHERE run_id = ?", [run_id]
    ).rows[0][0]
    share = 100 * booked / spent if spent else 0.0
    kinds = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
    detail = (
        f"${booked:.6f} of ${spent:.6f} ({share:.1f}%) booked at the reserved worst case "
        f"({kinds}); the provider may have billed less"
    )
    return Check("worst_case", True, detail)
