"""One run, as plain Python: what the Prefect flows wire together.

    async with Run.open(cfg, run_id=new_run_id(), flow="nightly_batch") as run:
        for batch in run.batches(run.corpus_chunks()):
            await run.process_batch(batch)
    run.summary()

``Run.open`` takes the run's lock, recovers what dead processes journaled, connects the
endpoints, writes a ``running`` run record, and on exit writes the final record
(``succeeded``, ``completed_with_failures`` or ``failed``), compacts the run's parts and
refreshes the DuckDB catalog. Each batch is committed as its own Parquet parts
(documents, chunks, results, ledger); every attempt and every chunk's result is also
journaled the moment it exists, so a killed run loses only the calls in flight.

``Run.open(..., resume=True)`` continues an interrupted run: chunks with a committed
result are skipped, rows already stored are not stored again, and the ledger cost
already spent counts against the cap. Chunks whose idempotency key (see ``family``)
already has a succeeded answer in the run family reuse it without a call.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from pipeline.audit import worst_case_spend
from pipeline.chunking import TokenCounter
from pipeline.config import Config
from pipeline.corpus import read_corpus
from pipeline.dispatch import Dispatcher, DispatchSettings
from pipeline.endpoints import Connections, connect
from pipeline.errors import ConfigError, LedgerWriteError, Stage, StageError
from pipeline.family import Prior, ReuseIndex, Selection, Versions, opening
from pipeline.models import BatchOutcome, Chunk, Result
from pipeline.policy import (
    BudgetGuard,
    EndpointGate,
    Residency,
    Router,
    endpoints_from_config,
    strategy_from_config,
)
from pipeline.progress import Progress
from pipeline.store import (
    CatalogLockedError,
    DocumentRow,
    PriceRow,
    RunRecord,
    RunStatus,
    Store,
    StoreError,
)
from pipeline.store.allocations import Seat, admit, granted_usd, monthly_share
from pipeline.store.journal import Journal, JournalClosedError, RunBusyError, RunLock, recover
from pipeline.tokens import get_counter
from schemas import get_schema

log = logging.getLogger(__name__)


async def drive(
    batches: Iterable[Batch], process: Callable[[Batch], Awaitable[object]], parallel: int
) -> None:
    """Run ``process`` over ``batches`` with up to ``parallel`` in flight.

    Overlapping batches keeps the endpoints busy while a batch's slowest chunks finish.
    Batches are pulled from the (streaming) iterator only when there is room. If one
    fails, no new batch starts, the others in flight finish (their parts are committed),
    and the first error is raised.
    """
    pending: set[asyncio.Future[object]] = set()
    failure: BaseException | None = None
    try:
        for batch in _read(batches):
            if isinstance(batch, StageError):  # the corpus could not be read on
                failure = batch
                break
            while len(pending) >= parallel and failure is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failure = _first_failure(done)
            if failure is not None:
                break
            pending.add(asyncio.ensure_future(process(batch)))
        if pending:
            done, pending = await asyncio.wait(pending)
            later = _first_failure(done)
            failure = failure or later
    except asyncio.CancelledError:
        for task in pending:  # nobody may be left running once drive() is gone
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise
    if failure is not None:
        raise failure


def _first_failure(done: Iterable[asyncio.Future[object]]) -> BaseException | None:
    """The first error among finished batches; every one is read (asyncio logs an error
    nobody read as "never retrieved")."""
    failures = [None if t.cancelled() else t.exception() for t in done]
    return next((f for f in failures if f is not None), None)


def _read(batches: Iterable[Batch]) -> Iterator[Batch | StageError]:
    """``batches``, then (instead of raising) the ingest failure that ended them, if any."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # a bad document is a row; this is the corpus itself
            yield StageError("ingest", None, exc)
            return
        yield batch


@contextmanager
def _stage(stage: Stage, batch_id: str) -> Iterator[None]:
    """Name the stage a batch failed in: a failure to write the journal or the parts is
    ``store`` wherever it surfaces (dispatch journals every attempt)."""
    try:
        yield
    except StageError:
        raise
    except (OSError, StoreError, LedgerWriteError, JournalClosedError) as exc:
        raise StageError("store", batch_id, exc) from exc
    except Exception as exc:
        raise StageError(stage, batch_id, exc) from exc


def require_run(store: Store, run_id: str) -> None:
    """Raise ConfigError unless ``run_id`` has a record under ``store``."""
    if store.latest_run(run_id) is None:
        raise ConfigError(f"run {run_id!r} not found under {store.root} (see `docroute runs`)")


def interrupted_message(run_id: str) -> str:
    """What an interrupted run's record says, with the command that continues it."""
    return f"interrupted; continue it with `docroute run --resume {run_id}`"


def new_run_id() -> str:
    """Sortable by start time, unique: ``20261121-020000-3f9a1c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    chunks: list[Chunk]
    documents: list[DocumentRow]


class Run:
    def __init__(
        self,
        cfg: Config,
        *,
        run_id: str,
        flow: str,
        conn: Connections,
        parent_run_id: str | None = None,
        family_id: str | None = None,
        prior: Prior | None = None,
        selection: Selection | None = None,
        started_at: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.flow = flow
        self.parent_run_id = parent_run_id
        self.family_id = family_id or run_id
        self.selection = selection
        self.prior = prior or Prior()
        self.conn = conn
        self.store = Store(cfg.output.root)
        self.schema = get_schema(cfg.task.schema_name)
        self.versions = Versions.of(cfg, self.schema)
        self.reuse = ReuseIndex.load(self.store, self.family_id)
        self.residency = Residency.from_config(cfg.corpus)
        self.counter: TokenCounter = get_counter(cfg.chunking.counter)
        self.router = Router(endpoints_from_config(cfg))
        self.budget = self._budget_guard()
        self.progress = Progress(budget_usd=self.budget.cap_usd)  # after a monthly cap
        self._count_prior()
        self.started_at = started_at or time.time()
        self._batches = 0
        self.dispatcher = Dispatcher(
            run_id=run_id,
            router=self.router,
            budget=self.budget,
            providers=conn.providers,
            schema=self.schema,
            settings=_dispatch_settings(cfg, self.schema.instructions),
            gates=gates_from_config(cfg),
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
        cls,
        cfg: Config,
        *,
        run_id: str,
        flow: str,
        parent_run_id: str | None = None,
        selection: Selection | None = None,
        resume: bool = False,
        force: bool = False,
        simulate: bool = False,
    ) -> AsyncIterator[Run]:
        """Open run ``run_id`` (a new one, or with ``resume`` an interrupted one).

        The run's lock is taken first, then journals of dead processes are recovered, so
        a resumed run sees every cost and result its earlier attempts made. Then the run
        takes its seat among the root's live runs (``allocations.admit``): refused with a
        ``RunConflictError`` while a run of the same config or family is alive (on an
        object-store root, on any machine: its lease), and given its share of
        ``budget.monthly_usd``.
        """
        endpoints_from_config(cfg)  # an unpriceable model fails here, before any work
        store = Store(cfg.output.root)
        try:
            lock = RunLock.acquire(store.state_dir, run_id)
        except RunBusyError as exc:
            raise ConfigError(str(exc)) from None
        seat: Seat | None = None
        try:
            store.migrate()  # an output root of an older docroute is brought up to date
            recover(store)  # costs and results journaled by a process that died come first
            setup = opening(
                store, cfg, run_id, parent_run_id, selection, resume=resume, force=force
            )
            seat = _admit(store, cfg, run_id, setup.get("family_id"))
            async with connect(cfg, simulate=simulate) as conn:
                notice = conn.notice()
                if notice:
                    log.info("%s", notice)
                run = cls(cfg, run_id=run_id, flow=flow, conn=conn, **setup)
                run._record("running")
                run._write_prices()
                try:
                    yield run
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

    def batches(self, items: Iterable[Chunk | DocumentRow]) -> Iterator[Batch]:
        """Group a stream of chunks (and document rows) into batches of ``routing.batch_size``."""
        size = self.cfg.routing.batch_size
        chunks: list[Chunk] = []
        docs: list[DocumentRow] = []
        prior = self.prior
        for item in items:
            if isinstance(item, DocumentRow):
                if item.doc_id not in prior.documents:  # a resumed run stored it already
                    docs.append(item)
                continue
            if item.chunk_id in prior.done:  # committed by an earlier attempt of this run
                continue
            chunks.append(item)
            if len(chunks) >= size:
                yield self._batch(chunks, docs)
                chunks, docs = [], []
        if chunks or docs:
            yield self._batch(chunks, docs)

    def _batch(self, chunks: list[Chunk], docs: list[DocumentRow]) -> Batch:
        self._batches += 1
        return Batch(batch_id=f"{self.run_id}/b{self._batches:05d}", chunks=chunks, documents=docs)

    # -- doing it -------------------------------------------------------------------------

    async def process_batch(self, batch: Batch) -> BatchOutcome:
        """Dispatch a batch and commit its rows; returns what it produced.

        Chunks whose idempotency key already has a succeeded answer in the run family
        reuse it (no call). Every attempt and every result is journaled the moment it
        exists, so a kill before the parts are written loses neither.
        """
        with _stage("store", batch.batch_id):  # a failure is the store's unless said below
            outcome = await self._process(batch)
        for result in outcome.results:
            if result.status == "succeeded" and result.idem_key:
                self.reuse.add(result.idem_key, self.run_id)
        return outcome

    async def _process(self, batch: Batch) -> BatchOutcome:
        self.progress.documents += len(batch.documents)
        self.progress.document_errors += sum(d.status == "error" for d in batch.documents)
        self.store.write_rows("documents", self.run_id, batch.documents)
        fresh = [c for c in batch.chunks if c.chunk_id not in self.prior.chunks]
        self.store.write_rows("chunks", self.run_id, [_chunk_row(self.run_id, c) for c in fresh])
        keys = {c.chunk_id: self.versions.key(c.text) for c in batch.chunks}
        reused = self._reused(batch.chunks, keys)
        todo = [c for c in batch.chunks if c.chunk_id not in reused]
        with Journal.open(self.store.state_dir, self.run_id, batch.batch_id) as journal:

            def finished(result: Result) -> None:
                result = self._stamp(result, keys[result.chunk_id])
                journal.append_result(result)
                self.progress.add(result)

            for result in reused.values():
                finished(result)
            with _stage("dispatch", batch.batch_id):
                outcome = await self.dispatcher.run_batch(
                    todo, on_result=finished, on_entry=journal.append
                )
            results = [*reused.values(), *outcome.results]
            outcome.results = [self._stamp(r, keys[r.chunk_id]) for r in results]
            self.store.write_rows("ledger", self.run_id, outcome.ledger)
            self.store.write_rows("results", self.run_id, outcome.results)
            journal.commit()
        return outcome

    def _reused(self, chunks: Sequence[Chunk], keys: dict[str, str]) -> dict[str, Result]:
        """Results for chunks whose answer the family already has (no call is made)."""
        return self.reuse.results(self.store, chunks, keys, self.run_id, self.schema.name)

    def _stamp(self, result: Result, key: str) -> Result:
        """``result`` with the run's schema version and the chunk's idempotency key."""
        if result.idem_key == key and result.schema_version == self.versions.schema_version:
            return result
        return replace(result, idem_key=key, schema_version=self.versions.schema_version)

    # -- records --------------------------------------------------------------------------

    def _record(
        self, status: RunStatus, *, finished: bool = False, message: str | None = None
    ) -> None:
        p = self.progress
        self.store.write_run(
            RunRecord(
                run_id=self.run_id,
                parent_run_id=self.parent_run_id,
                flow=self.flow,
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
                family_id=self.family_id,
                schema_version=self.versions.schema_version,
                prompt_version=self.versions.prompt_version,
                model_policy=self.versions.model_policy,
                selection=self.selection.to_json() if self.selection else None,
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
            )
            for e in self.router.endpoints
        ]
        self.store.write_rows("prices", self.run_id, rows)

    def summary(self) -> dict[str, Any]:
        """What a person wants to see at the end: counts, spend, where the data went."""
        per_provider = self.store.read(
            "SELECT provider, count(*) AS attempts, sum(cost_usd) AS cost_usd FROM ledger "
            "WHERE run_id = ? AND provider IS NOT NULL GROUP BY 1 ORDER BY 3 DESC",
            [self.run_id],
        ).rows
        reasons = self.store.read(
            "SELECT reason, count(*) FROM results WHERE run_id = ? AND status <> 'succeeded' "
            "GROUP BY 1 ORDER BY 2 DESC",
            [self.run_id],
        ).rows
        p = self.progress
        worst_usd, worst = worst_case_spend(self.store, self.run_id)
        disabled = self._disabled()
        return {
            "run_id": self.run_id,
            "parent_run_id": self.parent_run_id,
            "documents": p.documents,
            "document_errors": p.document_errors,
            "chunks": p.chunks,
            "succeeded": p.succeeded,
            "failed": p.failed,
            "skipped": p.skipped,
            "not_succeeded_by_reason": {r: n for r, n in reasons},
            "spend_usd": self.budget.spent_usd,
            "spend_worst_case_usd": worst_usd,
            "worst_case_attempts": worst,
            "disabled": disabled,
            "advice": self._advice(dict(reasons)),
            "budget_usd": self.cfg.budget.run_usd,
            "spend_by_provider": {
                name: {"attempts": n, "cost_usd": c} for name, n, c in per_provider
            },
            "simulated": list(self.conn.simulated),
            "output_root": str(self.store.root),
            "catalog": "none (object-store root)"
            if self.store.remote
            else str(self.store.catalog_path),
        }

    def _disabled(self) -> list[dict[str, Any]]:
        """Chunks that ended because an endpoint was taken out for the run, grouped by why:
        ``[{"why": "mistral-eu rejected the key (…)", "not_sent": 7, "failed": 1}]``
        (``failed``: their last call went to it before it was disabled)."""
        rows = self.store.read(
            "SELECT regexp_replace(error, '^not sent: ', '') AS why, "
            "count(*) FILTER (WHERE attempts = 0), count(*) FILTER (WHERE attempts > 0) "
            "FROM results WHERE run_id = ? AND status <> 'succeeded' "
            f"AND reason IN ({', '.join(repr(r) for r in _DISABLED)}) "
            "GROUP BY 1 ORDER BY 2 DESC, 3 DESC, 1",
            [self.run_id],
        ).rows
        return [{"why": why, "not_sent": unsent, "failed": sent} for why, unsent, sent in rows]

    def _advice(self, reasons: dict[str, int]) -> list[str]:
        """Which setting to change for the failures a setting can fix."""
        out = []
        cut = reasons.get("output_truncated", 0)
        if cut:
            cap = self.cfg.task.max_output_tokens
            out.append(
                f"{cut} chunk(s) had answers cut off at the output cap even with twice the "
                f"room: raise task.max_output_tokens (now {cap}), then `docroute rerun "
                f"{self.run_id} --reason output_truncated --set task.max_output_tokens="
                f"{2 * cap}`"
            )
        keys = reasons.get("auth_error", 0)
        if keys:
            out.append(
                f"{keys} chunk(s) ended on a rejected key: check the key in the variable the "
                f"provider's api_key_env names, then `docroute rerun {self.run_id} --reason "
                "auth_error`"
            )
        stopped = reasons.get("document_breaker", 0)
        if stopped:
            out.append(
                f"{stopped} chunk(s) were not sent because their document kept failing the "
                'same way (routing.document_failures_max): see `docroute sql "SELECT path, '
                f"reason, count(*) FROM results WHERE run_id = '{self.run_id}' AND status <> "
                "'succeeded' GROUP BY ALL\"`"
            )
        return out


#: Result reasons of chunks that ended because an endpoint was disabled for the run.
_DISABLED = ("auth_error", "endpoint_disabled")


def _dispatch_settings(cfg: Config, default_instructions: str) -> DispatchSettings:
    r = cfg.routing
    return DispatchSettings(
        instructions=cfg.task.instructions or default_instructions,
        max_output_tokens=cfg.task.max_output_tokens,
        temperature=cfg.task.temperature,
        max_attempts=r.max_attempts,
        repair_attempts=r.repair_attempts,
        retries_per_endpoint=r.retries_per_endpoint,
        backoff_initial_s=r.backoff_initial_s,
        backoff_max_s=r.backoff_max_s,
        concurrency=r.concurrency,
        cooldown_after=r.cooldown_after_failures,
        cooldown_s=r.cooldown_s,
        strategy=strategy_from_config(r, get_schema(cfg.task.schema_name).model.model_fields),
        on_exhausted=cfg.budget.on_exhausted,
        document_failures_max=r.document_failures_max,
        identical_errors_max=r.identical_errors_max,
    )


def gates_from_config(cfg: Config) -> dict[str, EndpointGate]:
    """One quota/cooldown gate per provider, shared by all batches of the run."""
    r = cfg.routing
    return {
        p.name: EndpointGate(
            rpm=p.rate_limits.rpm,
            tpm=p.rate_limits.tpm,
            max_concurrency=p.rate_limits.max_concurrency,
            cooldown_after=r.cooldown_after_failures,
            cooldown_s=r.cooldown_s,
        )
        for p in cfg.providers
    }


def _chunk_row(run_id: str, chunk: Chunk) -> dict[str, Any]:
    from dataclasses import asdict

    row = asdict(chunk)
    row["run_id"] = run_id
    row["regions"] = list(chunk.regions)
    return row


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


__all__ = ["Batch", "Run", "drive", "interrupted_message", "new_run_id", "require_run"]
