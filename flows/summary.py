"""A run's summary as people read it: on a terminal, and as the Prefect markdown artifact.

    print(format_summary(summary, config_path))     # what `docroute run` prints at the end
    summary_markdown(summary)                       # the "docroute-run-summary" artifact

``summary`` is what ``pipeline.summary.summarize`` returns (plus the flow's ``status``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Where ``docroute`` keeps data when neither ``--root`` nor a config names a root.
DEFAULT_ROOT = Path("docroute-output")


def format_summary(s: dict[str, Any], config: Path) -> str:
    """The end-of-run summary for a terminal."""
    lines = [
        "",
        f"run {s['run_id']}: {s['status']}"
        + (f" (rerun of {s['parent_run_id']})" if s.get("parent_run_id") else ""),
        f"  chunks     {s['chunks']}: {s['succeeded']} succeeded, {s['failed']} failed, "
        f"{s['skipped']} skipped",
        *(
            [
                f"  reused     {s['reused']} chunk(s) answered by earlier runs: no call, "
                f"${s.get('reused_saved_usd', 0.0):.4f} not paid again"
            ]
            if s.get("reused")
            else []
        ),
        f"  documents  {s['documents']}"
        + (f" ({s['document_errors']} unreadable)" if s["document_errors"] else ""),
        *([f"  deleted    {deleted(s)}"] if s.get("deleted") else []),
        f"  spend      ${s['spend_usd']:.4f} of ${s['budget_usd']:.2f} budget "
        f"({100 * s['spend_usd'] / s['budget_usd']:.1f}%)",
    ]
    for name, v in s["spend_by_provider"].items():
        lines.append(f"    {name:<18} ${v['cost_usd']:.6f}  ({v['attempts']} attempts)")
    if s.get("worst_case_attempts"):
        kinds = ", ".join(f"{n} {o}" for o, n in s["worst_case_attempts"].items())
        lines.append(
            f"    of which ${s['spend_worst_case_usd']:.6f} booked at the reserved worst case "
            f"({kinds}): the provider may have billed less"
        )
    if s.get("batch", {}).get("requests"):
        lines.append(f"  batch      {batched(s['batch'])}")
    for i, (reason, n) in enumerate(s["not_succeeded_by_reason"].items()):
        lines.append(f"  {'not done' if i == 0 else '':<10} {n} × {reason}")
    for i, d in enumerate(s.get("disabled", [])):
        # "mistral-eu rejected the key (Invalid API Key): 7 chunk(s) not sent, 1 failed"
        counts = [f"{d['not_sent']} chunk(s) not sent"] + (
            [f"{d['failed']} failed"] * bool(d["failed"])
        )
        lines.append(f"  {'disabled' if i == 0 else '':<10} {d['why']}: {', '.join(counts)}")
    lines += [
        f"  data       {s['output_root']}",
        '  query      docroute sql "SELECT provider, sum(cost_usd) FROM ledger GROUP BY 1"'
        + (
            ""
            if str(s["output_root"]) == str(DEFAULT_ROOT.resolve())
            else f" --root {s['output_root']}"
        ),
    ]
    if s.get("report"):
        lines.append(f"  report     {s['report']}")
    lines += [f"  advice     {a}" for a in s.get("advice", [])]
    if s["failed"] or s["skipped"]:
        lines.append(f"  rerun      docroute rerun {s['run_id']} --config {config}")
    return "\n".join(lines)


def deleted(s: dict[str, Any]) -> str:
    """ "2 document(s) since the last full run, gone from the corpus: a.txt, b.txt"."""
    shown = ", ".join(s["deleted_paths"])
    more = s["deleted"] - len(s["deleted_paths"])
    return f"{s['deleted']} document(s) of the last full run gone from the corpus: {shown}" + (
        f" and {more} more" if more > 0 else ""
    )


def summary_markdown(s: dict[str, Any]) -> str:
    """The run summary as the markdown artifact shows it."""
    lines = [
        f"# docroute run `{s['run_id']}`",
        "",
        "| chunks | succeeded | failed | skipped | documents | unreadable | spend | budget |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['chunks']} | {s['succeeded']} | {s['failed']} | {s['skipped']} | "
        f"{s['documents']} | {s['document_errors']} | ${s['spend_usd']:.4f} | "
        f"${s['budget_usd']:.2f} |",
        "",
        "| provider | attempts | cost (USD) |",
        "|---|---:|---:|",
    ]
    for name, v in s["spend_by_provider"].items():
        lines.append(f"| {name} | {v['attempts']} | {v['cost_usd']:.6f} |")
    if s.get("worst_case_attempts"):
        kinds = ", ".join(f"{n} {o}" for o, n in s["worst_case_attempts"].items())
        lines += [
            "",
            f"Booked at the reserved worst case: ${s['spend_worst_case_usd']:.6f} ({kinds}); "
            "the provider may have billed less.",
        ]
    if s.get("reused"):
        lines += [
            "",
            f"Reused {s['reused']} chunk(s) answered by earlier runs: no call, "
            f"${s.get('reused_saved_usd', 0.0):.4f} not paid again.",
        ]
    if s.get("deleted"):
        lines += ["", f"Deleted: {deleted(s)}."]
    if s.get("batch", {}).get("requests"):
        lines += ["", f"Batch jobs: {batched(s['batch'])}."]
    lines += [f"- {a}" for a in s.get("advice", [])]
    if s["not_succeeded_by_reason"]:
        lines += ["", "| not succeeded, by reason | chunks |", "|---|---:|"]
        lines += [f"| {r} | {n} |" for r, n in s["not_succeeded_by_reason"].items()]
    if s.get("disabled"):
        lines += ["", "| disabled for the run | chunks not sent | failed |", "|---|---:|---:|"]
        lines += [f"| {d['why']} | {d['not_sent']} | {d['failed']} |" for d in s["disabled"]]
    lines += ["", f"Data: `{s['output_root']}` (catalog `{s['catalog']}`)"]
    return "\n".join(lines)


__all__ = ["DEFAULT_ROOT", "format_summary", "summary_markdown"]


def batched(b: dict[str, Any]) -> str:
    """ "120 requests in batch jobs (118 answered): $0.0120, $0.0120 saved against sync"."""
    return (
        f"{b['requests']} requests in batch jobs ({b['answered']} answered): "
        f"${b['cost_usd']:.4f}, ${b['saved_usd']:.4f} saved against the sync prices"
    )
