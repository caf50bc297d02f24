"""The Prefect flows: ``nightly_batch`` over a corpus, ``rerun_failed`` over a run's failures.

Flows only wire the stages of ``pipeline``: one task per batch of chunks (asyncio inside
it, never a task per chunk), progress in the run log, and a summary artifact. A chunk's
failure is data in the results; a task fails only when a whole batch cannot be
processed or stored, and then names its stage and batch.

Both flows continue an interrupted run when asked (``resume=True``, what
``docroute run --resume`` passes) and when Prefect retries the flow run: the run id is
then derived from the flow run, so every attempt works on the same run, skips the chunks
committed before, and counts the money already spent against the same cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run
from prefect.utilities.annotations import quote

from pipeline.config import Config, load_config
from pipeline.errors import StageError
from pipeline.family import Selection, rerun_selection
from pipeline.providers.structured import enforcement_warnings
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
    except StageError:
        raise  # names its stage: dispatch or store
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
    resume: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Chunk the corpus of ``config_path``, route every chunk, validate, store, ledger.

    With ``resume``, continue the interrupted run ``run_id`` (a rerun's own chunk
    selection is taken from its record).
    """
    install_log_scrubber()
    cfg = load_config(config_path, overrides=_budget(budget_usd))
    run_id, resume = _attempt_of(cfg, run_id, resume)
    record = Store(cfg.output.root).latest_run(run_id) if resume else None
    if record is not None and record.selection:
        return await _rerun(
            cfg, Selection.from_json(record.selection), run_id, simulate, True, force
        )
    get_run_logger().info(
        "run %s%s · corpus %s · budget $%.2f",
        run_id,
        " (resumed)" if resume else "",
        cfg.corpus.path,
        cfg.budget.run_usd,
    )
    async with Run.open(
        cfg, run_id=run_id, flow="nightly_batch", simulate=simulate, resume=resume, force=force
    ) as run:
        _announce(run)
        summary = await _drive(run, run.batches(run.corpus_chunks()))
    return summary | {"status": _status(summary)}


#: The scheduled form (``docroute serve``, ``deployments/prefect.yaml``): a failed flow run
#: is retried, and each retry resumes the same run (see ``_attempt_of``).
scheduled_nightly_batch = nightly_batch.with_options(retries=2, retry_delay_seconds=300)


@flow(name="rerun-failed")
async def rerun_failed(
    parent_run_id: str,
    config_path: str,
    run_id: str | None = None,
    budget_usd: float | None = None,
    statuses: list[str] | None = None,
    simulate: bool = False,
    reasons: list[str] | None = None,
    providers: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Process again the chunks of ``parent_run_id`` that ``statuses``/``reasons``/``providers``
    select (default: failed or skipped), as a child run of it.

    ``overrides`` are dotted config keys (``{"task.max_output_tokens": 2048}``). A config
    whose schema or prompt differs from the parent's is refused while the family has
    succeeded answers, unless ``force``.
    """
    install_log_scrubber()
    cfg = load_config(config_path, overrides={**(overrides or {}), **_budget(budget_usd)})
    store = Store(cfg.output.root)
    run_id, resume = _attempt_of(cfg, run_id, False)
    if resume:  # a Prefect retry: attempt one checked it (Run.open reads what it recorded)
        require_run(store, parent_run_id)
        selection = Selection(
            parent_run_id,
            tuple(statuses or ("failed", "skipped")),
            tuple(reasons or ()),
            tuple(providers or ()),
        )
    else:  # checked before any record of the child exists
        selection = rerun_selection(
            store,
            cfg,
            parent_run_id,
            statuses=statuses,
            reasons=reasons,
            providers=providers,
            force=force,
        )
    return await _rerun(cfg, selection, run_id, simulate, resume, force)


async def _rerun(
    cfg: Config, selection: Selection, run_id: str, simulate: bool, resume: bool, force: bool
) -> dict[str, Any]:
    get_run_logger().info(
        "run %s reruns %s chunks of %s%s",
        run_id,
        "/".join(selection.statuses),
        selection.parent_run_id,
        " (resumed)" if resume else "",
    )
    async with Run.open(
        cfg,
        run_id=run_id,
        flow="rerun_failed",
        parent_run_id=selection.parent_run_id,
        selection=selection,
        resume=resume,
        force=force,
        simulate=simulate,
    ) as run:
        _announce(run)
        summary = await _drive(run, run.batches(run.rerun_chunks(selection)))
    return summary | {"status": _status(summary)}


def _attempt_of(cfg: Config, run_id: str | None, resume: bool) -> tuple[str, bool]:
    """The run id and whether to resume it, for this attempt of the flow run.

    A Prefect retry (``run_count > 1``) of a flow run whose run was recorded resumes it;
    without a given run id, the id is derived from the flow run so retries share it.
    """
    if run_id is None:
        flow_run_id = current_flow_run.id
        scheduled = current_flow_run.scheduled_start_time
        if flow_run_id and scheduled is not None:
            stamp = scheduled.astimezone(UTC).strftime("%Y%m%d-%H%M%S")
            run_id = f"{stamp}-{flow_run_id.replace('-', '')[:6]}"
        else:
            run_id = new_run_id()
    if not resume and (current_flow_run.run_count or 1) > 1:
        resume = Store(cfg.output.root).latest_run(run_id) is not None
    return run_id, resume


def _budget(budget_usd: float | None) -> dict[str, Any]:
    return {} if budget_usd is None else {"budget.run_usd": budget_usd}


def _announce(run: Run) -> None:
    logger = get_run_logger()
    notice = run.conn.notice()
    if notice:
        logger.info("%s", notice)
    for line in enforcement_warnings(run.router.endpoints, run.schema.json_schema()):
        logger.warning("schema %s: %s", run.schema.name, line)


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
    if s.get("worst_case_attempts"):
        kinds = ", ".join(f"{n} {o}" for o, n in s["worst_case_attempts"].items())
        lines += [
            "",
            f"Booked at the reserved worst case: ${s['spend_worst_case_usd']:.6f} ({kinds}); "
            "the provider may have billed less.",
        ]
    lines += [f"- {a}" for a in s.get("advice", [])]
    if s["not_succeeded_by_reason"]:
        lines += ["", "| not succeeded, by reason | chunks |", "|---|---:|"]
        lines += [f"| {r} | {n} |" for r, n in s["not_succeeded_by_reason"].items()]
    if s.get("disabled"):
        lines += ["", "| disabled for the run | chunks not sent | failed |", "|---|---:|---:|"]
        lines += [f"| {d['why']} | {d['not_sent']} | {d['failed']} |" for d in s["disabled"]]
    lines += ["", f"Data: `{s['output_root']}` (catalog `{s['catalog']}`)"]
    return "\n".join(lines)
