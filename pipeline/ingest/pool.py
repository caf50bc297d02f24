"""Extracting a stream of documents: PDFs and Word files in worker processes, the rest
inline, results in input order.

    for doc, got in extract_many(discover(root, ["**"]), max_bytes=50 * MB, workers=4):
        if isinstance(got, DocumentError):
            record(doc, reason=got.reason, message=got.message)
        else:
            chunks = chunk_document(doc, got.text, ..., page_starts=got.page_starts)

Parsing a PDF or a .docx costs far more CPU than reading it, so those documents
(``POOLED_SUFFIXES``) go to at most ``workers`` processes (a ``pebble.ProcessPool``),
started only when the first one comes; text formats are cheap and extracted inline. At
most ``in_flight`` documents (default ``2 * workers``) are taken from ``docs`` ahead of
the one the caller is waiting for, so a million-file corpus streams through in bounded
memory, and a slow PDF holds back at most that many finished results.

Every document gets exactly one result, never an exception: a ``DocumentError`` from
extraction is the result; so is anything else that goes wrong while extracting it, as
``unreadable``. A pooled document still being parsed ``timeout_s`` seconds after its
worker took it (a parser stuck in a loop, a file crafted to be slow) gets ``timeout``:
that worker process is killed, a fresh one takes its place, and the other documents go
on, in order. When a worker process dies under a document (a crash in native code, the
OOM killer), that document is tried once more in a fresh process; only if it kills that
one too does it get the ``unreadable`` error. Text formats are extracted inline by
linear-time code and have no time limit.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol, TypeAlias

from pebble import ProcessExpired, ProcessPool

from pipeline.ingest.base import DocumentError, ExtractedText, ExtractOptions
from pipeline.ingest.extraction import extract_text
from pipeline.models import Document
from pipeline.orphans import die_with_parent

__all__ = ["EXTRACT_TIMEOUT_S", "POOLED_SUFFIXES", "Extracted", "TextExtractor", "extract_many"]

#: Suffixes extracted in worker processes: parsing them is CPU-heavy.
POOLED_SUFFIXES = frozenset({".pdf", ".docx"})

#: The default of ``corpus.extract_timeout_s``: minutes beyond any sane PDF's parse time.
EXTRACT_TIMEOUT_S = 120.0

#: spawn: each worker a fresh interpreter and a child of this process, never a fork of a
#: parent that runs threads (an event loop, Prefect), which ``fork`` would copy mid-state.
#: Not forkserver: its workers are children of the fork server, which outlives a killed
#: parent while any of them runs, so a worker stuck in a parse would too.
_CONTEXT = multiprocessing.get_context("spawn")

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
    timeout_s: float | None = EXTRACT_TIMEOUT_S,
    extract: TextExtractor = extract_text,
) -> Iterator[tuple[Document, Extracted]]:
    """Stream ``(doc, ExtractedText or DocumentError)`` for each of ``docs``, in order.

    ``timeout_s`` bounds each pooled document's extraction (``None``: no bound).
    Arguments are checked at the call (``ValueError``); documents are read as the result
    stream is consumed. Closing the stream early stops the workers.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    limit = 2 * workers if in_flight is None else in_flight
    if limit < 1:
        raise ValueError(f"in_flight must be at least 1, got {in_flight}")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be more than 0 seconds (or None), got {timeout_s}")
    job = _Job(extract, max_bytes, ExtractOptions.of(options))
    return _stream(docs, job, _Workers(job, workers, timeout_s), limit)


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
            return _failed(doc, f"{type(exc).__name__}: {exc}")


@dataclass(slots=True)
class _Pending:
    """A document's place in the output order: its result, or the future that brings it."""

    doc: Document
    result: Extracted | None = None
    future: Future[Extracted] | None = None

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
            entry = _Pending(doc, future=workers.submit(doc)) if pooled else _Pending(doc, job(doc))
            pending.append(entry)
            while pending and pending[0].done():
                yield workers.resolve(pending.popleft())
        while pending:
            yield workers.resolve(pending.popleft())


class _Workers:
    """pebble's process pool, started on first use: a task past ``timeout_s`` has its
    worker killed (and replaced), a worker that dies fails only its own task."""

    def __init__(self, job: _Job, size: int, timeout_s: float | None) -> None:
        self._job, self._size, self._timeout_s = job, size, timeout_s
        self._pool: ProcessPool | None = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:  # busy workers are killed: no parser is left behind
            self._pool.stop()
            self._pool.join()
            self._pool = None

    def submit(self, doc: Document) -> Future[Extracted]:
        if self._pool is None:
            self._pool = ProcessPool(self._size, initializer=_worker_start, context=_CONTEXT)
        return self._pool.schedule(self._job, (doc,), timeout=self._timeout_s)

    def resolve(self, entry: _Pending) -> tuple[Document, Extracted]:
        """``entry``'s result, waiting for it if it is still being extracted."""
        doc = entry.doc
        if entry.future is None:
            assert entry.result is not None
            return doc, entry.result
        try:
            return doc, entry.future.result()
        except ProcessExpired:
            return doc, self._second_try(doc)
        except Exception as exc:
            return doc, self._failure(doc, exc)

    def _second_try(self, doc: Document) -> Extracted:
        """``doc`` again, in a fresh worker: whether it is what killed the first one."""
        try:
            return self.submit(doc).result()
        except ProcessExpired as exc:
            return DocumentError(
                "unreadable",
                f"{doc.path}: the process extracting it died (a crash in the parser, or out "
                f"of memory; exit code {exc.exitcode}), twice",
            )
        except Exception as exc:
            return self._failure(doc, exc)

    def _failure(self, doc: Document, exc: Exception) -> DocumentError:
        """What a future's error means (the job itself never raises: see ``_Job``)."""
        if isinstance(exc, FutureTimeout):
            return _timed_out(doc, self._timeout_s)
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, BrokenProcessPool):  # workers that die starting are not restarted
            return _failed(doc, f"the worker processes died while starting; {what}")
        return _failed(doc, f"a worker could not run it or return its result; {what}")


def _worker_start() -> None:
    """In each worker: the terminal's Ctrl-C is the parent's to handle, and on Linux the
    kernel kills the worker when its parent dies (``kill -9`` leaves no parser running)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)


def _timed_out(doc: Document, limit_s: float | None) -> DocumentError:
    return DocumentError(
        "timeout",
        f"{doc.path}: extraction was still running after {limit_s:g} s "
        "(corpus.extract_timeout_s), so the process parsing it was killed",
    )


def _failed(doc: Document, what: str) -> DocumentError:
    return DocumentError("unreadable", f"{doc.path}: extraction failed ({what})")
