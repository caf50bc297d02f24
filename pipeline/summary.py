"""A run's summary: what a person wants to see at the end, read back from the stored data.

    summary = summarize(run)      # counts, spend by provider, reasons, advice, where the data is
    summary["not_succeeded_by_reason"]   # {"budget_exhausted": 3, ...}
    summary["advice"]                    # which setting to change for the failures one can fix

The terminal and the Prefect artifact render it (``flows.summary``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.audit import batch_savings, worst_case_spend
from pipeline.changes import SHOWN
from pipeline.config import Config
from pipeline.store import Store

if TYPE_CHECKING:
    from pipeline.run import Run

#: Result reasons of chunks that ended because an endpoint was disabled for the run.
DISABLED = ("auth_error", "endpoint_disabled")


def summarize(run: Run) -> dict[str, Any]:
    """Counts, spend and where the data went, for ``run`` (open or just closed)."""
    store, run_id = run.store, run.run_id
    per_provider = store.read(
        "SELECT provider, count(*) AS attempts, sum(cost_usd) AS cost_usd FROM ledger "
        "WHERE run_id = ? AND provider IS NOT NULL GROUP BY 1 ORDER BY 3 DESC",
        [run_id],
    ).rows
    reasons = store.read(
        "SELECT reason, count(*) FROM results WHERE run_id = ? AND status <> 'succeeded' "
        "GROUP BY 1 ORDER BY 2 DESC",
        [run_id],
    ).rows
    # What the reused answers cost the runs that paid for them (the reuse index's rows).
    reused, saved = store.read(
        "SELECT count(*), coalesce(sum(o.cost_usd), 0) FROM results r LEFT JOIN ("
        " SELECT run_id, idem_key, max(cost_usd) AS cost_usd FROM answers GROUP BY 1, 2) o"
        " ON o.run_id = r.reused_from AND o.idem_key = r.idem_key"
        " WHERE r.run_id = ? AND r.reused_from IS NOT NULL",
        [run_id],
    ).rows[0]
    deleted = [
        path
        for (path,) in store.read(
            "SELECT path FROM documents WHERE run_id = ? AND status = 'deleted' ORDER BY 1",
            [run_id],
        ).rows
    ]
    p = run.progress
    worst_usd, worst = worst_case_spend(store, run_id)
    return {
        "run_id": run_id,
        "parent_run_id": run.opening.parent_run_id,
        "documents": p.documents,
        "document_errors": p.document_errors,
        "chunks": p.chunks,
        "succeeded": p.succeeded,
        "failed": p.failed,
        "skipped": p.skipped,
        "reused": int(reused),
        "reused_saved_usd": float(saved),
        "deleted": len(deleted),
        "deleted_paths": deleted[:SHOWN],
        "not_succeeded_by_reason": {r: n for r, n in reasons},
        "spend_usd": run.budget.spent_usd,
        "spend_worst_case_usd": worst_usd,
        "worst_case_attempts": worst,
        "disabled": disabled(store, run_id),
        "advice": advice(run.cfg, run_id, dict(reasons)),
        "budget_usd": run.cfg.budget.run_usd,
        "batch": batch_savings(store, run_id),
        "spend_by_provider": {name: {"attempts": n, "cost_usd": c} for name, n, c in per_provider},
        "simulated": list(run.conn.simulated),
        "output_root": str(store.root),
        "catalog": str(store.catalog_path or "none (object-store root)"),
    }


def disabled(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Chunks that ended because an endpoint was taken out for the run, grouped by why:
    ``[{"why": "mistral-eu rejected the key (…)", "not_sent": 7, "failed": 1}]``
    (``failed``: their last call went to it before it was disabled)."""
    rows = store.read(
        "SELECT regexp_replace(error, '^not sent: ', '') AS why, "
        "count(*) FILTER (WHERE attempts = 0), count(*) FILTER (WHERE attempts > 0) "
        "FROM results WHERE run_id = ? AND status <> 'succeeded' "
        f"AND reason IN ({', '.join(repr(r) for r in DISABLED)}) "
        "GROUP BY 1 ORDER BY 2 DESC, 3 DESC, 1",
        [run_id],
    ).rows
    return [{"why": why, "not_sent": unsent, "failed": sent} for why, unsent, sent in rows]


def advice(cfg: Config, run_id: str, reasons: dict[str, int]) -> list[str]:
    """Which setting to change for the failures a setting can fix."""
    out = []
    cut = reasons.get("output_truncated", 0)
    if cut:
        cap = cfg.task.max_output_tokens
        out.append(
            f"{cut} chunk(s) had answers cut off at the output cap even with twice the "
            f"room: raise task.max_output_tokens (now {cap}), then `docroute rerun "
            f"{run_id} --reason output_truncated --set task.max_output_tokens={2 * cap}`"
        )
    keys = reasons.get("auth_error", 0)
    if keys:
        out.append(
            f"{keys} chunk(s) ended on a rejected key: check the key in the variable the "
            f"provider's api_key_env names, then `docroute rerun {run_id} --reason "
            "auth_error`"
        )
    stopped = reasons.get("document_breaker", 0)
    if stopped:
        out.append(
            f"{stopped} chunk(s) were not sent because their document kept failing the "
            'same way (routing.document_failures_max): see `docroute sql "SELECT path, '
            f"reason, count(*) FROM results WHERE run_id = '{run_id}' AND status <> "
            "'succeeded' GROUP BY ALL\"`"
        )
    return out


__all__ = ["DISABLED", "advice", "disabled", "summarize"]


def endpoint_table(store: Store, run_id: str) -> list[dict[str, Any]]:
    """One row per endpoint the run called: attempts, answers, 429s, latency, cost (the
    flow run's table artifact)."""
    rows = store.read(
        "SELECT provider, model, region, count(*) AS attempts, "
        "count(*) FILTER (WHERE outcome = 'ok') AS ok, "
        "count(*) FILTER (WHERE http_status = 429) AS http_429, "
        "round(quantile_cont(latency_ms, 0.5) FILTER (WHERE mode = 'sync')) AS p50_ms, "
        "round(sum(cost_usd), 6) AS cost_usd FROM ledger "
        "WHERE run_id = ? AND provider IS NOT NULL GROUP BY 1, 2, 3 ORDER BY cost_usd DESC",
        [run_id],
    )
    return rows.to_dicts()
