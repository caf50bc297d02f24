"""The Prefect flows: ``nightly_batch`` over a corpus, ``rerun_failed`` over a run's failures.

Flows only wire the stages of ``pipeline``: one task per batch of chunks (asyncio inside
it, never a task per chunk), progress in the run log, and a summary artifact. A chunk's
failure is data in the results; a task fails only when a whole batch cannot be
processed or stored, and then names its stage and batch.

Which run a flow run opens is decided once (``pipeline.opening.decide``): by the
``docroute`` command, which passes the ``Opening`` in, or else by the flow from its
parameters. Both flows continue an interrupted run when asked (``resume=True``) and when
Prefect retries the flow run: the run id is then derived from the flow run, so every
attempt works on the same run, skips the chunks committed before, and counts the money
already spent against the same cap.
"""

# No ``from __future__ import annotations`` here: Prefect validates a served flow run's
# parameters against these annotations in a process where a string naming ``Opening``
# does not resolve (the flow run fails before it starts).

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run
from prefect.utilities.annotations import quote

from flows import terminal
from flows.summary import summary_markdown
from pipeline.batches import Batch, drive
from pipeline.config import Config, load_config
from pipeline.errors import StageError
from pipeline.opening import Opening, Request, decide, new_run_id
from pipeline.providers.structured import enforcement_warnings
from pipeline.run import Run
from pipeline.secrets import install_log_scrubber
from pipeline.store import Store
from pipeline.summary import endpoint_table

#: Seconds between progress lines while the run works (``DOCROUTE_PROGRESS_EVERY_S``).
PROGRESS_EVERY_S = 5.0


@task(name="process-batch", cache_policy=NO_CACHE, task_run_name="batch {batch.batch_id}")
async def process_batch(run: Run, batch: Batch) -> dict[str, int]:
    """Dispatch one batch of chunks and commit its Parquet parts."""
    logger = get_run_logger()
    try:
        outcome = await run.process_batch(batch)
    except StageError:
        raise  # names its stage: dispatch or store
    except Exception as exc:
        raise StageError("dispatch", batch.batch_id, exc) from exc
    counts = outcome.counts()
    # the batch's own figures; the run's progress is the flow's one line per tick
    logger.info(
        "%s done · %s",
        batch.batch_id.rsplit("/", 1)[-1],
        " · ".join(f"{n} {what}" for what, n in counts.items()),
    )
    return counts


async def _tick(run: Run, logger: Any) -> None:
    """The run's progress: one line every ``progress_every_s()`` (whatever is in flight),
    and on a terminal the bar redrawn twice a second (``flows.terminal``)."""
    every = progress_every_s()
    last = time.monotonic()
    while True:
        await asyncio.sleep(min(terminal.REFRESH_S, every))
        terminal.show(run.progress)
        if time.monotonic() - last >= every:
            last = time.monotonic()
            logger.info("… %s", run.progress.line(), extra=terminal.PROGRESS)


def progress_every_s() -> float:
    """Seconds between progress lines: ``$DOCROUTE_PROGRESS_EVERY_S``, else
    ``PROGRESS_EVERY_S``."""
    text = os.environ.get("DOCROUTE_PROGRESS_EVERY_S", "").strip()
    try:
        value = float(text) if text else PROGRESS_EVERY_S
    except ValueError:
        value = PROGRESS_EVERY_S
    return value if value > 0 else PROGRESS_EVERY_S


async def _drive(run: Run, batches: Iterable[Batch]) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.monotonic()

    async def one(batch: Batch) -> object:
        # quote: Prefect must not walk a batch's chunks looking for futures
        return await process_batch(quote(run), quote(batch))  # type: ignore[call-overload]

    run.progress.begin()
    ticker = asyncio.create_task(_tick(run, logger))
    try:
        await drive(batches, one, run.parallel)
    finally:
        ticker.cancel()
    summary = run.summary()
    summary["seconds"] = round(time.monotonic() - started, 2)
    report = _write_report(run)
    if report is not None:
        summary["report"] = str(report)
    await _publish(run, summary, report)
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
    full: bool = False,
    opening: Opening | None = None,
) -> dict[str, Any]:
    """Chunk the corpus of ``config_path``, route every chunk, validate, store, ledger.

    ``opening`` is what the command decided (``pipeline.opening``); without one (a
    scheduled run), the run is decided here: with ``resume``, continue the interrupted
    run ``run_id`` (a rerun's own chunk selection is taken from its record). ``full``:
    reuse no earlier run's answers (``reuse.across_runs: false``).
    """
    install_log_scrubber()
    overrides = _budget(budget_usd) | ({"reuse.across_runs": False} if full else {})
    cfg = load_config(config_path, overrides=overrides)
    request = Request(run_id=run_id, resume=run_id if resume else None, force=force)
    return await _execute(cfg, _opening(cfg, opening, request), simulate)


#: The scheduled form (``docroute serve``, ``deployments/prefect.yaml``): a failed flow run
#: is retried, and each retry resumes the same run (see ``_opening``).
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
    opening: Opening | None = None,
) -> dict[str, Any]:
    """Process again the chunks of ``parent_run_id`` that ``statuses``/``reasons``/``providers``
    select (default: failed or skipped), as a child run of it.

    ``overrides`` are dotted config keys (``{"task.max_output_tokens": 2048}``). A config
    whose schema or prompt differs from the parent's is refused while the family has
    succeeded answers, unless ``force``.
    """
    install_log_scrubber()
    cfg = load_config(config_path, overrides={**(overrides or {}), **_budget(budget_usd)})
    request = Request(
        run_id=run_id,
        force=force,
        parent_run_id=parent_run_id,
        statuses=tuple(statuses or ()),
        reasons=tuple(reasons or ()),
        providers=tuple(providers or ()),
    )
    return await _execute(cfg, _opening(cfg, opening, request), simulate)


async def _execute(cfg: Config, opening: Opening, simulate: bool) -> dict[str, Any]:
    logger = get_run_logger()
    again = " (resumed)" if opening.resumed else ""
    if opening.selection is None:
        logger.info(
            "run %s%s · corpus %s · budget $%.2f",
            opening.run_id,
            again,
            cfg.corpus.path,
            cfg.budget.run_usd,
        )
    else:
        logger.info(
            "run %s reruns %s chunks of %s%s",
            opening.run_id,
            "/".join(opening.selection.statuses),
            opening.selection.parent_run_id,
            again,
        )
    with _forwarded("pipeline.batch_dispatch", logger):  # batch jobs' progress, in the run log
        async with Run.open(cfg, opening, simulate=simulate) as run:
            _announce(run)
            summary = await _drive(run, run.batches())
    return summary | {"status": _status(summary)}


def _write_report(run: Run) -> Path | None:
    """The run's HTML report (``pipeline.report``) in ``<root>/reports/``, or in the local
    state folder for an object-store root; ``None`` when switched off or it failed (a
    report is for people: the run's data is complete without it)."""
    if not run.cfg.output.report:
        return None
    from pipeline.report import limits_from_config, write_report

    folder = run.store.root if isinstance(run.store.root, Path) else run.store.state_dir
    try:
        return write_report(
            run.store,
            run.run_id,
            folder / "reports" / f"{run.run_id}.html",
            limits=limits_from_config(run.cfg),
        )
    except Exception as exc:  # any failure of a chart stays a warning
        get_run_logger().warning("run %s: no report (%s: %s)", run.run_id, type(exc).__name__, exc)
        return None


async def _publish(run: Run, summary: dict[str, Any], report: Path | None) -> None:
    """The flow run's artifacts: the summary (markdown), a table per endpoint, and a link
    to the report."""
    what = f"docroute run {run.run_id}"
    await acreate_markdown_artifact(
        key="docroute-run-summary", markdown=summary_markdown(summary), description=what
    )
    rows = endpoint_table(run.store, run.run_id)
    if rows:
        await acreate_table_artifact(
            key="docroute-endpoints", table=rows, description=f"{what}: attempts per endpoint"
        )
    if report is not None:
        await acreate_link_artifact(
            key="docroute-run-report",
            link=report.resolve().as_uri(),
            link_text=f"report of run {run.run_id}",
            description=f"{what}: charts (one HTML file, opens offline)",
        )


@contextmanager
def _forwarded(name: str, logger: Any) -> Iterator[None]:
    """Records of the logger ``name`` (INFO and up) go to the flow run's ``logger``: what
    the pipeline says about long waits (a batch job's progress) shows in Prefect."""
    source = logging.getLogger(name)

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logger.log(record.levelno, "%s", record.getMessage())

    handler = Forward(logging.INFO)
    level, propagate = source.level, source.propagate
    source.addHandler(handler)
    source.setLevel(logging.INFO)
    source.propagate = False  # once, in the run log
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(level)
        source.propagate = propagate


def _opening(cfg: Config, given: Opening | None, request: Request) -> Opening:
    """The run this attempt of the flow run opens.

    The one the command decided, if given; else decided here from the flow's parameters.
    A Prefect retry (``run_count > 1``) of a flow run whose run was recorded resumes it;
    without a given run id, the id is derived from the flow run so retries share it.
    """
    retry = (current_flow_run.run_count or 1) > 1
    if given is not None and not retry:
        return given
    store = Store(cfg.output.root)
    run_id = given.run_id if given else request.resume or request.run_id or _flow_run_id()
    if retry and request.resume is None and store.latest_run(run_id) is not None:
        request = Request(resume=run_id, force=request.force or bool(given and given.force))
    elif given is not None:
        return given  # a retry of an attempt that recorded nothing: as decided
    elif request.resume is None:
        request = replace(request, run_id=run_id)
    return decide(store, cfg, request)


def _flow_run_id() -> str:
    """A run id shared by every attempt of this flow run (time-based outside a flow run)."""
    flow_run_id = current_flow_run.id
    scheduled = current_flow_run.scheduled_start_time
    if flow_run_id and scheduled is not None:
        stamp = scheduled.astimezone(UTC).strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{flow_run_id.replace('-', '')[:6]}"
    return new_run_id()


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
