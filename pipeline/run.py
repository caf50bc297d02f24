"""One run, as plain Python: what the Prefect flows wire together.

    async with Run.open(cfg, run_id=new_run_id(), flow="nightly_batch") as run:
        for batch in run.batches(run.corpus_chunks()):
            await run.process_batch(batch)
    run.summary()

``Run.open`` connects the endpoints, writes a ``running`` run record, and on exit writes
the final record (``succeeded``, ``completed_with_failures`` or ``failed``) and refreshes
the DuckDB catalog. Each batch is committed as its own Parquet parts (documents, chunks,
results, ledger), so a batch is either wholly stored or absent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.chunking import TokenCounter, chunk_document, chunk_stream
from pipeline.config import Config
from pipeline.dispatch import Dispatcher, DispatchSettings
from pipeline.endpoints import Connections, connect
from pipeline.errors import ConfigError
from pipeline.ingest import DocumentError, discover, extract_many
from pipeline.ingest.stream import open_text_stream, should_stream
from pipeline.models import BatchOutcome, Chunk, Document, DocumentStatus
from pipeline.policy import BudgetGuard, EndpointGate, Residency, Router, endpoints_from_config
from pipeline.progress import Progress
from pipeline.store import CatalogLockedError, DocumentRow, RunRecord, RunStatus, Store
from pipeline.store.journal import Journal, recover
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
        for batch in batches:
            while len(pending) >= parallel and failure is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failure = next((t.exception() for t in done if t.exception()), None)
            if failure is not None:
                break
            pending.add(asyncio.ensure_future(process(batch)))
        if pending:
            done, pending = await asyncio.wait(pending)
            failure = failure or next((t.exception() for t in done if t.exception()), None)
    except asyncio.CancelledError:
        for task in pending:  # nobody may be left running once drive() is gone
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise
    if failure is not None:
        raise failure


def require_run(store: Store, run_id: str) -> None:
    """Raise ConfigError unless ``run_id`` has a record under ``store``."""
    if store.latest_run(run_id) is None:
        raise ConfigError(f"run {run_id!r} not found under {store.root} (see `docroute runs`)")


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
    ) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.flow = flow
        self.parent_run_id = parent_run_id
        self.conn = conn
        self.store = Store(cfg.output.root)
        self.schema = get_schema(cfg.task.schema_name)
        self.residency = Residency.from_config(cfg.corpus)
        self.counter: TokenCounter = get_counter(cfg.chunking.counter)
        self.router = Router(endpoints_from_config(cfg))
        self.budget = BudgetGuard(cfg.budget.run_usd)
        self.progress = Progress(budget_usd=cfg.budget.run_usd)
        self.started_at = time.time()
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

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        cfg: Config,
        *,
        run_id: str,
        flow: str,
        parent_run_id: str | None = None,
        simulate: bool = False,
    ) -> AsyncIterator[Run]:
        endpoints_from_config(cfg)  # an unpriceable model fails here, before any work
        async with connect(cfg, simulate=simulate) as conn:
            notice = conn.notice()
            if notice:
                log.info("%s", notice)
            run = cls(cfg, run_id=run_id, flow=flow, conn=conn, parent_run_id=parent_run_id)
            recover(run.store)  # costs journaled by a process that died are ledgered first
            run._record("running")
            try:
                yield run
            except BaseException as exc:
                run._record("failed", message=f"{type(exc).__name__}: {exc}")
                run.refresh_catalog()
                raise
            done = run.progress.failed + run.progress.skipped == 0
            status: RunStatus = "succeeded" if done else "completed_with_failures"
            run._record(status, finished=True)
            run.refresh_catalog()

    def refresh_catalog(self) -> None:
        """Refresh the DuckDB views; a catalog held open by a user's client is not fatal."""
        try:
            self.store.refresh_catalog()
        except CatalogLockedError as exc:
            log.warning("catalog not refreshed (%s); `docroute sql` refreshes it next time", exc)

    # -- what to process ------------------------------------------------------------------

    def corpus_chunks(self) -> Iterator[Chunk | DocumentRow]:
        """Documents of the corpus, one at a time: each one's row, then its chunks."""
        c = self.cfg.corpus
        max_bytes = int(c.max_file_mb * 1024 * 1024)
        options = {"jsonl_text_field": c.jsonl.text_field, "jsonl_id_field": c.jsonl.id_field}
        large: list[Document] = []  # streamed after the rest, never held whole

        def whole() -> Iterator[Document]:
            for doc in discover(c.path, c.include, c.exclude):
                if should_stream(doc):
                    large.append(doc)
                else:
                    yield doc

        for doc, extracted in extract_many(
            whole(), max_bytes=max_bytes, workers=c.extract_workers, options=options
        ):
            if isinstance(extracted, DocumentError):
                row = self._doc_row(
                    doc, "error", reason=extracted.reason, message=extracted.message
                )
                yield row
                continue
            decision = self.residency.decide(doc.path)
            chunks = list(
                chunk_document(
                    doc,
                    extracted.text,
                    max_tokens=self.cfg.chunking.max_tokens,
                    overlap_tokens=self.cfg.chunking.overlap_tokens,
                    counter=self.counter,
                    regions=decision.regions,
                    residency_rule=decision.rule,
                    page_starts=extracted.page_starts,
                )
            )
            yield self._doc_row(
                doc, "ok", encoding=extracted.encoding, note=extracted.note, chunks=len(chunks)
            )
            yield from chunks

        for doc in large:
            yield from self._streamed(doc, max_bytes)

    def _streamed(self, doc: Document, max_bytes: int) -> Iterator[Chunk | DocumentRow]:
        """A large plain-text document's chunks, read in blocks; then its row."""
        try:
            stream = open_text_stream(doc, max_bytes=max_bytes)
        except DocumentError as exc:
            yield self._doc_row(doc, "error", reason=exc.reason, message=exc.message)
            return
        decision = self.residency.decide(doc.path)
        count = 0
        for chunk in chunk_stream(
            doc,
            stream.blocks(),
            max_tokens=self.cfg.chunking.max_tokens,
            overlap_tokens=self.cfg.chunking.overlap_tokens,
            counter=self.counter,
            regions=decision.regions,
            residency_rule=decision.rule,
        ):
            count += 1
            yield chunk
        if count == 0:
            message = f"{doc.path}: no text, only whitespace ({doc.size_bytes} bytes)"
            yield self._doc_row(doc, "error", reason="empty", message=message)
            return
        yield self._doc_row(doc, "ok", encoding=stream.encoding, note=stream.note, chunks=count)

    def rerun_chunks(self, parent_run_id: str, statuses: Sequence[str]) -> Iterator[Chunk]:
        """The parent run's chunks whose result has one of ``statuses``, with today's residency."""
        marks = ", ".join("?" for _ in statuses)
        rows = self.store.read(
            "SELECT c.chunk_id, c.doc_id, c.path, c.index, c.char_start, c.char_end, "
            "c.token_estimate, c.text, coalesce(c.pages, []::INTEGER[]) "
            "FROM chunks c JOIN results r ON r.run_id = c.run_id AND r.chunk_id = c.chunk_id "
            f"WHERE c.run_id = ? AND r.status IN ({marks}) ORDER BY c.path, c.index",
            [parent_run_id, *statuses],
        )
        for chunk_id, doc_id, path, index, start, end, tokens, text, pages in rows.rows:
            decision = self.residency.decide(path)
            yield Chunk(
                chunk_id=chunk_id,
                doc_id=doc_id,
                path=path,
                index=index,
                char_start=start,
                char_end=end,
                token_estimate=tokens,
                text=text,
                regions=decision.regions,
                residency_rule=decision.rule,
                pages=tuple(pages),
            )

    def batches(self, items: Iterable[Chunk | DocumentRow]) -> Iterator[Batch]:
        """Group a stream of chunks (and document rows) into batches of ``routing.batch_size``."""
        size = self.cfg.routing.batch_size
        chunks: list[Chunk] = []
        docs: list[DocumentRow] = []
        for item in items:
            if isinstance(item, DocumentRow):
                docs.append(item)
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
        """Dispatch a batch and commit its rows; returns what it produced."""
        self.progress.documents += len(batch.documents)
        self.progress.document_errors += sum(d.status == "error" for d in batch.documents)
        self.store.write_rows("documents", self.run_id, batch.documents)
        self.store.write_rows(
            "chunks", self.run_id, [_chunk_row(self.run_id, c) for c in batch.chunks]
        )
        with Journal.open(self.store.root, self.run_id, batch.batch_id) as journal:
            outcome = await self.dispatcher.run_batch(
                batch.chunks, on_result=self.progress.add, on_entry=journal.append
            )
            self.store.write_rows("ledger", self.run_id, outcome.ledger)
            self.store.write_rows("results", self.run_id, outcome.results)
            journal.commit()
        return outcome

    # -- records --------------------------------------------------------------------------

    def _doc_row(
        self,
        doc: Document,
        status: DocumentStatus,
        *,
        reason: str | None = None,
        message: str | None = None,
        encoding: str | None = None,
        note: str | None = None,
        chunks: int = 0,
    ) -> DocumentRow:
        return DocumentRow(
            run_id=self.run_id,
            doc_id=doc.doc_id,
            path=doc.path,
            size_bytes=doc.size_bytes,
            status=status,
            reason=reason,
            message=message,
            encoding=encoding,
            note=note,
            chunks=chunks,
        )

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
                budget_usd=self.cfg.budget.run_usd,
                spend_usd=self.budget.spent_usd,
                documents=p.documents,
                document_errors=p.document_errors,
                chunks=p.chunks,
                succeeded=p.succeeded,
                failed=p.failed,
                skipped=p.skipped,
                message=message,
                token_counter=self.counter.name,
            )
        )

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
            "budget_usd": self.cfg.budget.run_usd,
            "spend_by_provider": {
                name: {"attempts": n, "cost_usd": c} for name, n, c in per_provider
            },
            "simulated": list(self.conn.simulated),
            "output_root": str(self.store.root),
            "catalog": str(self.store.root / "catalog.duckdb"),
        }


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


__all__ = ["Batch", "Run", "drive", "new_run_id", "require_run"]
