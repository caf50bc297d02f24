"""A run's batches: chunks grouped, each batch dispatched and committed, batches overlapped.

    committer = BatchCommitter(store, run_id, dispatcher, versions, reuse, prior, progress)
    for batch in committer.batches(chunks_and_document_rows, size=64):
        outcome = await committer.process_batch(batch)     # its parts are on disk now
    await drive(committer.batches(items, size=64), committer.process_batch, parallel=2)

Each batch is committed as its own Parquet parts (documents, chunks, results, ledger);
every attempt and every chunk's result is also journaled the moment it exists, so a
killed run loses only the calls in flight. Chunks whose idempotency key already has a
succeeded answer in the run family reuse it (no call); chunks and document rows an
earlier attempt of a resumed run committed are not processed or stored again.
A batch that fails names its stage (``StageError``: ingest, dispatch or store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from pipeline.batch_dispatch import BatchDispatcher
from pipeline.dispatch import Dispatcher
from pipeline.errors import LedgerWriteError, Stage, StageError
from pipeline.family import Prior, ReuseIndex, Versions
from pipeline.models import BatchOutcome, Chunk, Result
from pipeline.progress import Progress
from pipeline.store import DocumentRow, Store, StoreError
from pipeline.store.journal import Journal, JournalClosedError


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    chunks: list[Chunk]
    documents: list[DocumentRow]


class BatchCommitter:
    """Processes run ``run_id``'s batches: reuse, dispatch, journal, commit."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        dispatcher: Dispatcher | BatchDispatcher,
        versions: Versions,
        reuse: ReuseIndex,
        prior: Prior,
        progress: Progress,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.dispatcher = dispatcher
        self.versions = versions
        self.reuse = reuse
        self.prior = prior
        self.progress = progress
        self._batches = 0

    def batches(self, items: Iterable[Chunk | DocumentRow], size: int) -> Iterator[Batch]:
        """Group a stream of chunks (and document rows) into batches of ``size`` chunks."""
        chunks: list[Chunk] = []
        docs: list[DocumentRow] = []
        prior = self.prior
        seen = 0
        for item in items:
            if isinstance(item, DocumentRow):
                if item.doc_id not in prior.documents:  # a resumed run stored it already
                    docs.append(item)
                continue
            seen += 1
            if item.chunk_id in prior.done:  # committed by an earlier attempt of this run
                continue
            chunks.append(item)
            if len(chunks) >= size:
                yield self._batch(chunks, docs)
                chunks, docs = [], []
        self.progress.total = seen  # the whole stream is read: the run's total is known
        if chunks or docs:
            yield self._batch(chunks, docs)

    def _batch(self, chunks: list[Chunk], docs: list[DocumentRow]) -> Batch:
        self._batches += 1
        return Batch(batch_id=f"{self.run_id}/b{self._batches:05d}", chunks=chunks, documents=docs)

    async def process_batch(self, batch: Batch) -> BatchOutcome:
        """Dispatch a batch and commit its rows; returns what it produced.

        Chunks whose idempotency key already has a succeeded answer in the run family
        reuse it (no call). Every attempt and every result is journaled the moment it
        exists, so a kill before the parts are written loses neither.
        """
        with stage("store", batch.batch_id):  # a failure is the store's unless said below
            outcome = await self._process(batch)
        for result in outcome.results:
            if result.status == "succeeded" and result.idem_key:
                self.reuse.add(result.idem_key, self.run_id, result.region)
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
            with stage("dispatch", batch.batch_id):
                outcome = await self.dispatcher.run_batch(
                    todo, on_result=finished, on_entry=journal.append
                )
            results = [*reused.values(), *outcome.results]
            outcome.results = [self._stamp(r, keys[r.chunk_id]) for r in results]
            self.store.write_rows("ledger", self.run_id, outcome.ledger)
            self.store.write_results(self.run_id, outcome.results)
            journal.commit()
        return outcome

    def _reused(self, chunks: Sequence[Chunk], keys: dict[str, str]) -> dict[str, Result]:
        """Results for chunks whose answer the family already has (no call is made)."""
        return self.reuse.results(self.store, chunks, keys, self.run_id, self.versions.schema_name)

    def _stamp(self, result: Result, key: str) -> Result:
        """``result`` with the run's schema version and the chunk's idempotency key."""
        if result.idem_key == key and result.schema_version == self.versions.schema_version:
            return result
        return replace(result, idem_key=key, schema_version=self.versions.schema_version)


def _chunk_row(run_id: str, chunk: Chunk) -> dict[str, Any]:
    row = asdict(chunk)
    row["run_id"] = run_id
    row["regions"] = list(chunk.regions)
    return row


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
def stage(name: Stage, batch_id: str) -> Iterator[None]:
    """Name the stage a batch failed in: a failure to write the journal or the parts is
    ``store`` wherever it surfaces (dispatch journals every attempt)."""
    try:
        yield
    except StageError:
        raise
    except (OSError, StoreError, LedgerWriteError, JournalClosedError) as exc:
        raise StageError("store", batch_id, exc) from exc
    except Exception as exc:
        raise StageError(name, batch_id, exc) from exc


__all__ = ["Batch", "BatchCommitter", "drive", "stage"]
