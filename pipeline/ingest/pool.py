"""Extracting a stream of documents: PDFs and Word files in worker processes, the rest
inline, results in input order.

    for doc, got in extract_many(discover(root, ["**"]), max_bytes=50 * MB, workers=4):
        if isinstance(got, DocumentError):
            record(doc, reason=got.reason, message=got.message)
        else:
            chunks = chunk_document(doc, got.text, ..., page_starts=got.page_starts)

Parsing a PDF or a .docx costs far more CPU than reading it, so those documents
(``POOLED_SUFFIXES``) go to a ``ProcessPoolExecutor`` of at most ``workers`` processes,
started only when the first one comes; text formats are cheap and extracted inline. At
most ``in_flight`` documents (default ``2 * workers``) are taken from ``docs`` ahead of
the one the caller is waiting for, so a million-file corpus streams through in bounded
memory, and a slow PDF holds back at most that many finished results.

Every document gets exactly one result, never an exception: a ``DocumentError`` from
extraction is the result; so is anything else that goes wrong while extracting it, as
``unreadable``. When a worker process dies (a crash in native code, the OOM killer), the
pool breaks and every document in flight loses its answer: each of those is tried again
alone in a fresh process, and only the one that kills that process too gets the
``unreadable`` error; the others come back with their text.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol, TypeAlias

from pipeline.ingest.base import DocumentError, ExtractedText, ExtractOptions
from pipeline.ingest.extraction import extract_text
from pipeline.models import Document

__all__ = ["POOLED_SUFFIXES", "Extracted", "TextExtractor", "extract_many"]

#: Suffixes extracted in worker processes: parsing them is CPU-heavy.
POOLED_SUFFIXES = frozenset({".pdf", ".docx"})

#: forkserver where there is one: workers forked from a clean process, never from a parent
#: that runs threads (an event loop, Prefect), which ``fork`` alone would copy mid-state.
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"

Extracted: TypeAlias = ExtractedText | DocumentError


class TextExtractor(Protocol):
    """What ``extract_many`` calls per document: ``extract_text`` unless told otherwise;
    it must be a module-level function, so worker processes can import it."""

    def __call__(
        self, doc: Document, *, max_bytes: int, options: ExtractOptions
    ) -> ExtractedText: ...


def extract_many(
    docs: Iterable[Document],
    *,
    max_bytes: int,
    workers: int,
    options: ExtractOptions | Mapping[str, str] | None = None,
    in_flight: int | None = None,
    extract: TextExtractor = extract_text,
) -> Iterator[tuple[Document, Extracted]]:
    """Stream ``(doc, ExtractedText or DocumentError)`` for each of ``docs``, in order.

    Arguments are checked at the call (``ValueError``); documents are read as the result
    stream is consumed. Closing the stream early stops the workers.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    limit = 2 * workers if in_flight is None else in_flight
    if limit < 1:
        raise ValueError(f"in_flight must be at least 1, got {in_flight}")
    job = _Job(extract, max_bytes, ExtractOptions.of(options))
    return _stream(docs, job, _Workers(job, workers), limit)


@dataclass(frozen=True, slots=True)
class _Job:
    """One document's extraction, the same for all; it pickles, to reach the workers."""

    extract: TextExtractor
    max_bytes: int
    options: ExtractOptions

    def __call__(self, doc: Document) -> Extracted:
        try:
            return self.extract(doc, max_bytes=self.max_bytes, options=self.options)
        except DocumentError as exc:
            return exc
        except Exception as exc:  # promise 6: one bad document never stops the run
            return _failed(doc, exc)


@dataclass(slots=True)
class _Pending:
    """A document's place in the output order: its result, or the future that brings it."""

    doc: Document
    result: Extracted | None = None
    future: Future[Extracted] | None = None
    executor: ProcessPoolExecutor | None = None

    def done(self) -> bool:
        return self.future is None or self.future.done()


def _stream(
    docs: Iterable[Document], job: _Job, workers: _Workers, limit: int
) -> Iterator[tuple[Document, Extracted]]:
    pending: deque[_Pending] = deque()
    with workers:
        for doc in docs:
            if len(pending) >= limit:
                yield workers.resolve(pending.popleft())
            pooled = PurePosixPath(doc.path).suffix.lower() in POOLED_SUFFIXES
            pending.append(workers.submit(doc) if pooled else _Pending(doc, result=job(doc)))
            while pending and pending[0].done():
                yield workers.resolve(pending.popleft())
        while pending:
            yield workers.resolve(pending.popleft())


class _Workers:
    """A process pool started on first use and replaced when a worker dies."""

    def __init__(self, job: _Job, workers: int) -> None:
        self._job = job
        self._workers = workers
        self._context = multiprocessing.get_context(START_METHOD)
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, doc: Document) -> _Pending:
        for _ in range(2):  # a pool found broken here is replaced once
            executor = self._current()
            try:
                return _Pending(doc, future=executor.submit(self._job, doc), executor=executor)
            except BrokenProcessPool:
                self._discard(executor)
        return _Pending(doc, result=self._alone(doc))

    def resolve(self, entry: _Pending) -> tuple[Document, Extracted]:
        if entry.future is None:
            assert entry.result is not None
            return entry.doc, entry.result
        try:
            return entry.doc, entry.future.result()
        except BrokenProcessPool:
            self._discard(entry.executor)
            return entry.doc, self._alone(entry.doc)
        except Exception as exc:  # e.g. a result that did not pickle on its way back
            return entry.doc, _failed(entry.doc, exc)

    def _current(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self._workers, mp_context=self._context)
        return self._executor

    def _discard(self, executor: ProcessPoolExecutor | None) -> None:
        if executor is not None and executor is self._executor:
            self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)

    def _alone(self, doc: Document) -> Extracted:
        """``doc`` in a process of its own: whether it is the one that kills its worker."""
        with ProcessPoolExecutor(1, mp_context=self._context) as solo:
            try:
                return solo.submit(self._job, doc).result()
            except BrokenProcessPool:
                return DocumentError(
                    "unreadable",
                    f"{doc.path}: the process extracting it died (a crash in the parser, "
                    "or out of memory), twice",
                )
            except Exception as exc:
                return _failed(doc, exc)


def _failed(doc: Document, exc: BaseException) -> DocumentError:
    return DocumentError(
        "unreadable", f"{doc.path}: extraction failed ({type(exc).__name__}: {exc})"
    )
