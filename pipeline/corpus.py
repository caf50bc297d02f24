"""Reading a corpus as a run does: discover, extract, decide residency, chunk.

    for item in read_corpus(cfg, run_id=run_id, counter=get_counter("auto")):
        ...  # a DocumentRow per document (ok or error), then that document's Chunks

No endpoint is connected and nothing is written, so ``docroute plan`` reads a corpus the
same way ``Run.corpus_chunks`` does, chunk for chunk. Documents come in discovery order;
plain-text files over ``pipeline.ingest.stream.STREAM_ABOVE_BYTES`` come last, streamed
in blocks (their row after their chunks; one that fails or changes mid-read gets an
error row, see ``_Reader._streamed``). A PDF or docx whose parsing runs past
``corpus.extract_timeout_s`` gets an error row (``timeout``) and the run goes on. Each
usable record of a ``.jsonl`` file is its own document (``data.jsonl#<key>``, its offsets
within its own text) unless ``corpus.jsonl.per_record`` is false; a file without one
usable record gets one error row, at the file's path. Each document's residency is
decided from its metadata, the manifest, the path rules and the default
(``pipeline.policy.residency``), and every chunk carries the decision (``regions``,
``residency_rule``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from pipeline.chunking import chunk_document, chunk_stream
from pipeline.config import Config
from pipeline.ingest import DocumentError, ExtractedText, discover, extract_many
from pipeline.ingest.frontmatter import read_front_matter
from pipeline.ingest.jsonl import record_path
from pipeline.ingest.stream import open_text_stream, should_stream
from pipeline.models import Chunk, Document, DocumentStatus, stable_id
from pipeline.policy.residency import (
    Decision,
    Metadata,
    Residency,
    extract_options,
    unserved_warning,
)
from pipeline.store import DocumentRow
from pipeline.tokens import TokenCounter

__all__ = ["read_corpus", "residency_warnings"]

log = logging.getLogger(__name__)


def read_corpus(
    cfg: Config,
    *,
    run_id: str,
    counter: TokenCounter,
    residency: Residency | None = None,
    announce: bool = True,
) -> Iterator[Chunk | DocumentRow]:
    """Documents of ``cfg.corpus``, one at a time: each one's row, then its chunks.

    With ``announce``, regions the residency config names but no endpoint serves, and
    path rules that match no document (one walk of the file names, nothing read), are
    logged first, at the call (a caller that shows them itself passes False).
    """
    reader = _Reader(cfg, run_id, counter, residency or Residency.from_config(cfg.corpus))
    if announce:
        for line in residency_warnings(cfg, reader.residency):
            log.warning("residency: %s", line)
    return reader.items()


def residency_warnings(cfg: Config, residency: Residency) -> list[str]:
    """What a run and ``plan`` warn of before reading any document: regions the residency
    config names that no endpoint serves, and path rules that match none of the corpus's
    files (one walk of the file names; rules match a file's path, a JSONL record's too)."""
    c = cfg.corpus
    paths = (doc.path for doc in discover(c.path, c.include, c.exclude))
    return residency.unserved(p.region for p in cfg.providers) + residency.unmatched(paths)


@dataclass
class _Reader:
    cfg: Config
    run_id: str
    counter: TokenCounter
    residency: Residency
    _told: set[str] = field(default_factory=set)  # metadata region sets already warned of

    def items(self) -> Iterator[Chunk | DocumentRow]:
        c = self.cfg.corpus
        max_bytes = int(c.max_file_mb * 1024 * 1024)
        large: list[Document] = []  # streamed after the rest, never held whole

        def whole() -> Iterator[Document]:
            for doc in discover(c.path, c.include, c.exclude):
                if should_stream(doc):
                    large.append(doc)
                else:
                    yield doc

        for doc, extracted in extract_many(
            whole(),
            max_bytes=max_bytes,
            workers=c.extract_workers,
            options=extract_options(c),
            timeout_s=c.extract_timeout_s,
        ):
            if isinstance(extracted, DocumentError):
                yield self._row(doc, "error", reason=extracted.reason, message=extracted.message)
            elif extracted.records and c.jsonl.per_record:
                yield from self._records(doc, extracted)
            else:
                yield from self._document(doc, extracted, extracted.text, extracted.metadata)

        for doc in large:
            yield from self._streamed(doc, max_bytes)

    def _records(self, doc: Document, extracted: ExtractedText) -> Iterator[Chunk | DocumentRow]:
        """Each record of a JSON Lines file as its own document, at ``<file>#<key>``: its
        own id, its own metadata, offsets within its own text. The file's note (lines
        skipped, an encoding fallback) is on every record's row: it is true of each."""
        for record in extracted.records:
            path = record_path(doc.path, record.key)
            part = Document(stable_id(path), path, doc.abs_path, record.size_bytes)
            text = extracted.text[record.start : record.end]
            meta = () if record.metadata is None else (record.metadata,)
            yield from self._document(part, extracted, text, meta, file=doc.path)

    def _document(
        self,
        doc: Document,
        extracted: ExtractedText,
        text: str,
        metadata: Metadata,
        file: str | None = None,
    ) -> Iterator[Chunk | DocumentRow]:
        """``doc``'s row, then its chunks of ``text`` (all of ``extracted``, or one record
        of it, in ``file``)."""
        decision = self._decide(doc, metadata, file)
        chunks = list(
            chunk_document(
                doc,
                text,
                max_tokens=self.cfg.chunking.max_tokens,
                overlap_tokens=self.cfg.chunking.overlap_tokens,
                counter=self.counter,
                regions=decision.regions,
                residency_rule=decision.rule,
                page_starts=extracted.page_starts,
            )
        )
        yield self._row(
            doc, "ok", encoding=extracted.encoding, note=extracted.note, chunks=len(chunks)
        )
        yield from chunks

    def _streamed(self, doc: Document, max_bytes: int) -> Iterator[Chunk | DocumentRow]:
        """A large plain-text document's chunks, read in blocks; then its row.

        When the file fails or changes while it is read (an ``OSError``, truncated, grown,
        rewritten: ``pipeline.ingest.stream``), no more of it is read or chunked and its
        row is an error (``unreadable``). Chunks already yielded were cut from the file
        as it was and are already on their way (a run may have sent and billed them), so
        they stand, each with its own result; the row counts them in ``chunks`` and its
        message says how far they reach. The chunk the reader was still filling is
        dropped, never passed on as if the document ended there.
        """
        try:
            stream = open_text_stream(doc, max_bytes=max_bytes)
            meta = read_front_matter(
                doc.abs_path, stream.encoding, field=extract_options(self.cfg.corpus).metadata_field
            )
        except (DocumentError, OSError) as exc:
            message = exc.message if isinstance(exc, DocumentError) else f"{doc.path}: {exc}"
            reason = exc.reason if isinstance(exc, DocumentError) else "unreadable"
            yield self._row(doc, "error", reason=reason, message=message)
            return
        decision = self._decide(doc, () if meta is None else (meta,))
        count, end = 0, 0
        try:
            for chunk in chunk_stream(
                doc,
                stream.blocks(),
                max_tokens=self.cfg.chunking.max_tokens,
                overlap_tokens=self.cfg.chunking.overlap_tokens,
                counter=self.counter,
                regions=decision.regions,
                residency_rule=decision.rule,
            ):
                count, end = count + 1, chunk.char_end
                yield chunk
        except DocumentError as exc:  # it failed or changed mid-read: see the docstring
            message = f"{exc.message}; {_kept(count, end)}"
            yield self._row(doc, "error", reason=exc.reason, message=message, chunks=count)
            return
        if count == 0:
            message = f"{doc.path}: no text, only whitespace ({doc.size_bytes} bytes)"
            yield self._row(doc, "error", reason="empty", message=message)
            return
        yield self._row(doc, "ok", encoding=stream.encoding, note=stream.note, chunks=count)

    def _decide(self, doc: Document, metadata: Metadata, file: str | None = None) -> Decision:
        """The document's residency (a record's: ``file`` is its file's path); what its own
        metadata gets wrong is logged."""
        decision = self.residency.decide(doc.path, metadata=metadata, file=file or doc.path)
        if decision.rule.endswith(":invalid"):
            log.warning(
                "residency: %s: its %r metadata is not a list of regions; it is sent nowhere",
                doc.path,
                self.residency.field,
            )
        elif decision.rule.startswith("metadata:"):
            served = {p.region for p in self.cfg.providers}
            told = ",".join(sorted(decision.regions))
            line = unserved_warning(decision.regions, f"metadata of {doc.path}", served)
            if line is not None and told not in self._told:  # once per set of regions
                self._told.add(told)
                log.warning("residency: %s", line)
        return decision

    def _row(
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


def _kept(count: int, end: int) -> str:
    """What of a document that failed mid-read was already passed on."""
    if count == 0:
        return "none of it was chunked"
    return (
        f"the {count} chunk(s) before character {end:,} were already passed on and stand; "
        "the rest was not chunked"
    )
