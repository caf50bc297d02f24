"""One run's session, as plain Python: what the Prefect flows wire together.

    opening = decide(store, cfg, Request())             # which run (``pipeline.opening``)
    async with Run.open(cfg, opening) as run:
        for batch in run.batches():                     # the opening's chunks, in batches
            await run.process_batch(batch)
    run.summary()

``Run.open`` takes the run's lock, recovers what dead processes journaled, confirms the
opening still holds, takes the run's seat among the root's live runs, connects the
endpoints, writes a ``running`` run record, and on exit writes the final record
(``succeeded``, ``completed_with_failures``, ``failed`` or ``interrupted``), compacts the
run's parts and refreshes the DuckDB catalog. Batches are grouped, dispatched and
committed by the run's ``BatchCommitter`` (``pipeline.batches``), through the sync
``Dispatcher`` or, with ``routing.mode`` ``batch`` or ``auto``, the ``BatchDispatcher`` in
front of it (``pipeline.batch_dispatch``: provider batch jobs, adopted on resume).

A resumed opening continues an interrupted run: chunks with a committed result are
skipped, rows already stored are not stored again, and the ledger cost already spent
counts against the cap. Chunks whose idempotency key (see ``family``) already has a
succeeded answer on the root (or, with ``--full``, in the run family) reuse it without a
call, within the run's ``ReuseScope``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from pipeline.batch_dispatch import BatchDispatcher
from pipeline.batches import Batch, BatchCommitter
from pipeline.changes import deleted_rows, last_night
from pipeline.config import Config
from pipeline.corpus import read_corpus
from pipeline.dispatch import Dispatcher
from pipeline.endpoints import Connections, connect
from pipeline.errors import ConfigError
from pipeline.family import Prior, ReuseIndex, ReuseScope, Selection, Versions
from pipeline.models import BatchOutcome, Chunk
from pipeline.opening import Opening
from pipeline.policy import (
    BudgetGuard,
    Residency,
    Router,
    dispatch_settings,
    endpoints_from_config,
    gates_from_config,
)
from pipeline.progress import Progress
from pipeline.store import (
    CatalogLockedError,
    DocumentRow,
    PriceRow,
    RunRecord,
    RunStatus,
    Store,
)
from pipeline.store.allocations import Seat, admit, granted_usd, monthly_share
from pipeline.store.intents import Intents
from pipeline.store.journal import RunBusyError, RunLock, recover
from pipeline.summary import summarize
from pipeline.tokens import TokenCounter, get_counter
from schemas import get_schema

log = logging.getLogger(__name__)


def require_run(store: Store, run_id: str) -> None:
    """Raise ConfigError unless ``run_id`` has a record under ``store``."""
    if store.latest_run(run_id) is None:
        raise ConfigError(f"run {run_id!r} not found under {store.root} (see `docroute runs`)")


def interrupted_message(run_id: str) -> str:
    """What an interrupted run's record says, with the command that continues it."""
    return f"interrupted; continue it with `docroute run --resume {run_id}`"


class Run:
    """An open run: its endpoints, budget, progress and records (see ``Run.open``)."""

    def __init__(
        self,
        cfg: Config,
        opening: Opening,
        *,
        conn: Connections,
        prior: Prior | None = None,
        store: Store | None = None,
    ) -> None:
        self.cfg = cfg
        self.opening = opening
        self.run_id = opening.run_id
        self.prior = prior or Prior()
        self.conn = conn
        self.store = store or Store(cfg.output.root)
        self.schema = get_schema(cfg.task.schema_name)
        self.versions = Versions.of(cfg, self.schema)
        self.residency = Residency.from_config(cfg.corpus)
        self.counter: TokenCounter = get_counter(cfg.chunking.counter)
        self.router = Router(endpoints_from_config(cfg))
        self.budget = self._budget_guard()
        self.progress = Progress(budget_usd=self.budget.cap_usd)  # after a monthly cap
        self._count_prior()
        self.started_at = opening.started_at or time.time()
        self.reuse = opening.reuse or ReuseScope.of(cfg, self.store, now=self.started_at)
        self.sync = Dispatcher(
            run_id=self.run_id,
            router=self.router,
            budget=self.budget,
            providers=conn.providers,
            schema=self.schema,
            settings=dispatch_settings(cfg, self.schema),
            gates=gates_from_config(cfg),
        )
        self.dispatcher: Dispatcher | BatchDispatcher = self.sync
        r = cfg.routing
        # Provider batch jobs first (``pipeline.batch_dispatch``); also for a run resumed
        # in sync mode whose earlier attempt left jobs out: they are read, never resent.
        if r.mode != "sync" or Intents(self.store.state_dir).pending(self.run_id):
            self.dispatcher = BatchDispatcher(
                self.sync,
                store=self.store,
                mode=r.mode,
                deadline_at=cfg.schedule.deadline_after(self.started_at),
                poll_s=r.batch_poll_s,
                poll_max_s=r.batch_poll_max_s,
            )
        self.committer = BatchCommitter(
            self.store,
            self.run_id,
            self.dispatcher,
            self.versions,
            ReuseIndex.scoped(self.store, opening.family_id, self.reuse),
            self.prior,
            self.progress,
        )

    def _budget_guard(self) -> BudgetGuard:
        """The run's hard cap, less what this run id already spent (a resumed run).

        With ``budget.monthly_usd`` the cap is the run's allocation: at most what the other
        runs' ledger costs of the last 30 days and the allocations of live runs on the root
        leave of it (0: every chunk is skipped, no call is made); with
        ``budget.document_usd`` each document's chunks have that cap too.
        """
        b = self.cfg.budget
        cap = b.run_usd
        if b.monthly_usd is not None:  # the allocation ``Run.open`` took (``allocations``)
            granted = granted_usd(self.store, self.run_id)
            if granted is None:  # a Run built without ``open``: a share, not reserved
                granted = monthly_share(self.store, self.run_id, b.run_usd, b.monthly_usd)
            cap = min(cap, granted)
        return BudgetGuard(
            cap,
            spent_usd=self._spent_before(),
            document_cap_usd=b.document_usd,
            document_spent_usd=self.prior.spent_by_document,
        )

    def _spent_before(self) -> float:
        """Ledger cost already recorded for this run id (0 for a new run)."""
        return self.prior.spent_usd

    def _count_prior(self) -> None:
        """A resumed run's tallies start from what its earlier attempts committed."""
        p, prior = self.progress, self.prior
        p.documents, p.document_errors = len(prior.documents), prior.document_errors
        p.succeeded = prior.counts.get("succeeded", 0)
        p.failed = prior.counts.get("failed", 0)
        p.skipped = prior.counts.get("skipped", 0)
        p.spend_usd = prior.spent_usd

    @classmethod
    @asynccontextmanager
    async def open(
        cls, cfg: Config, opening: Opening, *, simulate: bool = False
    ) -> AsyncIterator[Run]:
        """Open the run ``opening`` names (see ``pipeline.opening.decide``).

        The run's lock is taken first, then journals of dead processes are recovered, so
        a resumed run sees every cost and result its earlier attempts made. Then the run
        takes its seat among the root's live runs (``allocations.admit``): refused with a
        ``RunConflictError`` while a run of the same config or family is alive (on an
        object-store root, on any machine: its lease), and given its share of
        ``budget.monthly_usd``.
        """
        endpoints_from_config(cfg)  # an unpriceable model fails here, before any work
        store = Store(cfg.output.root)
        run_id = opening.run_id
        try:
            lock = RunLock.acquire(store.state_dir, run_id)
        except RunBusyError as exc:
            raise ConfigError(str(exc)) from None
        seat: Seat | None = None
        try:
            store.migrate()  # an output root of an older docroute is brought up to date
            recover(store)  # costs and results journaled by a process that died come first
            opening.confirm(store)
            prior = Prior.load(store, run_id) if opening.resumed else None
            seat = _admit(store, cfg, run_id, opening.family_id)
            async with connect(cfg, simulate=simulate) as conn:
                notice = conn.notice()
                if notice:
                    log.info("%s", notice)
                run = cls(cfg, opening, conn=conn, prior=prior, store=store)
                run._record("running")
                run._write_prices()
                try:
                    await run.adopt_jobs()
                    yield run
                    await run.finish_jobs()
                    run.record_deleted()
                except (KeyboardInterrupt, asyncio.CancelledError):
                    # Stopped from outside (Ctrl-C, a cancelled flow run): nothing failed,
                    # and the run goes on where it stopped.
                    run._record("interrupted", message=interrupted_message(run_id))
                    run.refresh_catalog()
                    raise
                except BaseException as exc:
                    run._record("failed", message=f"{type(exc).__name__}: {exc}")
                    run.refresh_catalog()
                    raise
                done = run.progress.failed + run.progress.skipped == 0
                status: RunStatus = "succeeded" if done else "completed_with_failures"
                run._record(status, finished=True)
                run.compact()
                run.refresh_catalog()
        finally:
            if seat is not None:
                seat.release()  # after the last record: its ledger spend counts from now
            lock.release()

    async def adopt_jobs(self) -> None:
        """A resumed run takes over the batch jobs its earlier attempt left outstanding."""
        if isinstance(self.dispatcher, BatchDispatcher):
            await self.dispatcher.adopt()

    async def finish_jobs(self) -> None:
        """Book the requests of adopted jobs whose chunks this run never reached."""
        if isinstance(self.dispatcher, BatchDispatcher):
            rows = await self.dispatcher.finish()
            if rows:
                self.store.write_rows("ledger", self.run_id, rows)
                self.progress.spend_usd = self.budget.spent_usd

    def record_deleted(self) -> None:
        """A nightly run that read the whole corpus records the documents last night's run
        read and it did not, as ``deleted`` rows of its ``documents`` (``pipeline.changes``)."""
        if self.opening.selection is not None:
            return  # a rerun reads its parent's chunks, not the corpus
        before = last_night(self.store, self.cfg, not_run=self.run_id)
        if before is None:
            return
        self.store.write_rows(
            "documents", self.run_id, deleted_rows(self.store, before, self.run_id)
        )

    def compact(self) -> None:
        """Merge this run's small parts into one per table (readers never miss or double)."""
        try:
            self.store.compact(self.run_id)
        except OSError as exc:  # housekeeping: the data is complete without it
            log.warning("run %s: compaction skipped (%s)", self.run_id, exc)

    def refresh_catalog(self) -> None:
        """Refresh the DuckDB views; a catalog held open by a user's client is not fatal."""
        try:
            self.store.refresh_catalog()
        except CatalogLockedError as exc:
            log.warning("catalog not refreshed (%s); `docroute sql` refreshes it next time", exc)

    # -- what to process ------------------------------------------------------------------

    def chunks(self) -> Iterator[Chunk | DocumentRow]:
        """What the opening processes: the corpus, or the parent's selected chunks."""
        selection = self.opening.selection
        return self.rerun_chunks(selection) if selection else self.corpus_chunks()

    def corpus_chunks(self) -> Iterator[Chunk | DocumentRow]:
        """Documents of the corpus, one at a time: each one's row, then its chunks (read as
        ``docroute plan`` reads them: ``pipeline.corpus.read_corpus``)."""
        return read_corpus(
            self.cfg, run_id=self.run_id, counter=self.counter, residency=self.residency
        )

    def rerun_chunks(self, selection: Selection) -> Iterator[Chunk]:
        """The parent run's chunks that ``selection`` takes.

        Their regions are today's decision narrowed to the parent's: a rerun may be
        stricter than the run it repairs, never looser (a document whose front matter
        said ``eu`` may be gone from disk by now).
        """
        where, params = selection.sql()
        rows = self.store.read(
            "SELECT c.chunk_id, c.doc_id, c.path, c.index, c.char_start, c.char_end, "
            "c.token_estimate, c.text, coalesce(c.pages, []::INTEGER[]), c.regions "
            "FROM chunks c JOIN results r ON r.run_id = c.run_id AND r.chunk_id = c.chunk_id "
            f"WHERE c.run_id = ? AND {where} ORDER BY c.path, c.index",
            [selection.parent_run_id, *params],
        )
        for chunk_id, doc_id, path, index, start, end, tokens, text, pages, before in rows.rows:
            decision = self.residency.decide(path)
            regions = tuple(r for r in decision.regions if r in set(before))
            yield Chunk(
                chunk_id=chunk_id,
                doc_id=doc_id,
                path=path,
                index=index,
                char_start=start,
                char_end=end,
                token_estimate=tokens,
                text=text,
                regions=regions,
                residency_rule=decision.rule,
                pages=tuple(pages),
            )

    def batches(self, items: Iterable[Chunk | DocumentRow] | None = None) -> Iterator[Batch]:
        """``items`` (default: ``chunks()``) in batches of ``routing.batch_size``."""
        return self.committer.batches(
            self.chunks() if items is None else items, self.cfg.routing.batch_size
        )

    @property
    def parallel(self) -> int:
        """Batches in flight at once: ``parallel_batches``, or ``jobs_in_flight`` when the
        batches are provider jobs that mostly wait."""
        r = self.cfg.routing
        return r.parallel_batches if r.mode == "sync" else max(r.jobs_in_flight, r.parallel_batches)

    async def process_batch(self, batch: Batch) -> BatchOutcome:
        """Dispatch one batch and commit its rows (``BatchCommitter.process_batch``)."""
        return await self.committer.process_batch(batch)

    # -- records --------------------------------------------------------------------------

    def _record(
        self, status: RunStatus, *, finished: bool = False, message: str | None = None
    ) -> None:
        p = self.progress
        self.store.write_run(
            RunRecord(
                run_id=self.run_id,
                parent_run_id=self.opening.parent_run_id,
                flow=self.opening.flow,
                status=status,
                started_at=self.started_at,
                finished_at=time.time() if finished or status == "failed" else None,
                updated_at=time.time(),
                config_hash=self.cfg.fingerprint(),
                corpus=str(self.cfg.corpus.path),
                schema_name=self.schema.name,
                budget_usd=self.budget.cap_usd,
                spend_usd=self.budget.spent_usd,
                documents=p.documents,
                document_errors=p.document_errors,
                chunks=p.chunks,
                succeeded=p.succeeded,
                failed=p.failed,
                skipped=p.skipped,
                message=message,
                token_counter=self.counter.name,
                family_id=self.opening.family_id,
                schema_version=self.versions.schema_version,
                prompt_version=self.versions.prompt_version,
                model_policy=self.versions.model_policy,
                selection=_selection(self.opening.selection),
                reuse=self.reuse.to_json(),
            )
        )

    def _write_prices(self) -> None:
        """The prices this attempt of the run counts with, for ``docroute audit``."""
        rows = [
            PriceRow(
                run_id=self.run_id,
                provider=e.provider,
                model=e.model,
                region=e.region,
                input_per_mtok=e.price.input_per_mtok,
                output_per_mtok=e.price.output_per_mtok,
                cached_input_per_mtok=e.price.cached_input_per_mtok,
                cache_write_per_mtok=e.price.cache_write_per_mtok,
                context_window=e.price.context_window,
                max_output_tokens=e.price.max_output_tokens,
                priced_at=e.price.priced_at,
                batch_input_per_mtok=e.price.batch_input_per_mtok,
                batch_output_per_mtok=e.price.batch_output_per_mtok,
            )
            for e in self.router.endpoints
        ]
        self.store.write_rows("prices", self.run_id, rows)

    def summary(self) -> dict[str, Any]:
        """What a person wants to see at the end (``pipeline.summary``)."""
        return summarize(self)


def _selection(selection: Selection | None) -> str | None:
    return selection.to_json() if selection else None


def _admit(store: Store, cfg: Config, run_id: str, family_id: str | None) -> Seat:
    """The run's seat among the live runs of its root (see ``pipeline.store.allocations``)."""
    return admit(
        store,
        run_id=run_id,
        config_hash=cfg.fingerprint(),
        family_id=family_id or run_id,
        run_cap_usd=cfg.budget.run_usd,
        monthly_usd=cfg.budget.monthly_usd,
    )


__all__ = ["Batch", "Run", "interrupted_message", "require_run"]
