"""The Prefect flows: ``nightly_batch`` over a corpus, ``rerun_failed`` over a run's failures.

Flows only wire the stages of ``pipeline``: one task per batch of chunks (asyncio inside
it, never a task per chunk), progress in the run log, and a summary artifact. A chunk's
failure is data in the results; a task fails only when a whole batch cannot be
processed or stored, and then names its stage and batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from pipeline.config import load_config
from pipeline.errors import StageError
from pipeline.run import Batch, Run, drive, new_run_id, require_run
from pipeline.secrets import install_log_scrubber
from pipeline.store import Store

#: Seconds between progress lines while a batch is in flight.
PROGRESS_EVERY_S = 5.0


@task(name="process-batch", cache_policy=NO_CACHE, task_run_name="batch {batch.batch_id}")
async def process_batch(run: Run, batch: Batch) -> dict[str, int]:
    """Dispatch one batch of chunks and commit its Parquet parts."""
    logger = get_run_logger()
    ticker = asyncio.create_task(_tick(run, logger))
    try:
        outcome = await run.process_batch(batch)
    except Exception as exc:
        raise StageError("dispatch", batch.batch_id, exc) from exc
    finally:
        ticker.cancel()
    logger.info("%s done · %s", batch.batch_id.rsplit("/", 1)[-1], run.progress.line())
    return outcome.counts()


async def _tick(run: Run, logger: Any) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        logger.info("… %s", run.progress.line())


async def _drive(run: Run, batches: Iterable[Batch]) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.monotonic()

    async def one(batch: Batch) -> object:
        # quote: Prefect must not walk a batch's chunks looking for futures
        return await process_batch(quote(run), quote(batch))  # type: ignore[call-overload]

    await drive(batches, one, run.cfg.routing.parallel_batches)
    summary = run.summary()
    summary["seconds"] = round(time.monotonic() - started, 2)
    await acreate_markdown_artifact(
        key="docroute-run-summary",
        markdown=summary_markdown(summary),
        description=f"docroute run {run.run_id}",
    )
    logger.info("run %s finished · %s", run.run_id, run.progress.line())
    return summary


@flow(name="nightly-batch")
async def nightly_batch(
    config_path: str,
    run_id: str | None = None,
    budget_usd: float | None = None,
    simulate: bool = False,
) -> dict[str, Any]:
    """Chunk the corpus of ``config_path``, route every chunk, validate, store, ledger."""
    install_log_scrubber()
    cfg = load_config(config_path, overrides=_budget(budget_usd))
    run_id = run_id or new_run_id()
    get_run_logger().info(
        "run %s · corpus %s · budget $%.2f", run_id, cfg.corpus.path, cfg.budget.run_usd
    )
    async with Run.open(cfg, run_id=run_id, flow="nightly_batch", simulate=simulate) as run:
        _announce(run)
        summary = await _drive(run, run.batches(run.corpus_chunks()))
    return summary | {"status": _status(summary)}


@flow(name="rerun-failed")
async def rerun_failed(
    parent_run_id: str,
    config_path: str,
    run_id: str | None = None,
    budget_usd: float | None = None,
    statuses: list[str] | None = None,
    simulate: bool = False,
) -> dict[str, Any]:
    """Process again only the chunks of ``parent_run_id`` that failed or were skipped."""
    install_log_scrubber()
    cfg = load_config(config_path, overrides=_budget(budget_usd))
    require_run(Store(cfg.output.root), parent_run_id)  # before any record of the child
    run_id = run_id or new_run_id()
    wanted = statuses or ["failed", "skipped"]
    get_run_logger().info("run %s reruns %s chunks of %s", run_id, "/".join(wanted), parent_run_id)
    async with Run.open(
        cfg, run_id=run_id, flow="rerun_failed", parent_run_id=parent_run_id, simulate=simulate
    ) as run:
        _announce(run)
        summary = await _drive(run, run.batches(run.rerun_chunks(parent_run_id, wanted)))
    return summary | {"status": _status(summary)}


def _budget(budget_usd: float | None) -> dict[str, Any]:
    return {} if budget_usd is None else {"budget.run_usd": budget_usd}


def _announce(run: Run) -> None:
    notice = run.conn.notice()
    if notice:
        get_run_logger().info("%s", notice)


def _status(summary: dict[str, Any]) -> str:
    return "succeeded" if summary["failed"] + summary["skipped"] == 0 else "completed_with_failures"


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
    if s["not_succeeded_by_reason"]:
        lines += ["", "| not succeeded, by reason | chunks |", "|---|---:|"]
        lines += [f"| {r} | {n} |" for r, n in s["not_succeeded_by_reason"].items()]
    lines += ["", f"Data: `{s['output_root']}` (catalog `{s['catalog']}`)"]
    return "\n".join(lines)
