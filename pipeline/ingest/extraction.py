"""From a discovered ``Document`` to its text, by a table of extractors keyed by suffix.

    try:
        extracted = extract_text(doc, max_bytes=50 * 1024 * 1024)
    except DocumentError as exc:
        ...  # exc.reason: "empty", "binary", "too_large", "unreadable", "unsupported",
             # "encrypted" or "no_text"
    chunks = chunk_document(doc, extracted.text, ..., page_starts=extracted.page_starts)

The checks every format shares live here, in this order: a suffix with no extractor is
``unsupported``; a file over ``max_bytes`` is ``too_large`` (judged from its size, before
a byte is read, and again while reading, in case it grew); a file that cannot be opened
or read is ``unreadable``; no bytes at all, or text that is only whitespace, is
``empty``. The extractor itself decides what is ``binary``, ``encrypted`` or ``no_text``.

Many documents at once, with PDFs and Word files parsed in worker processes:
``pipeline.ingest.pool.extract_many``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from types import MappingProxyType

from pipeline.ingest.base import DocumentError, ExtractedText, ExtractOptions, Extractor
from pipeline.ingest.docx_file import extract_docx
from pipeline.ingest.html_page import extract_html
from pipeline.ingest.jsonl import extract_jsonl
from pipeline.ingest.pdf import extract_pdf
from pipeline.ingest.plaintext import extract_plain
from pipeline.models import Document

__all__ = ["EXTRACTORS", "extract_text", "extractor_for"]

#: Lower-case suffix → extractor. Adding a format is one module and one line here.
EXTRACTORS: Mapping[str, Extractor] = MappingProxyType(
    {
        ".txt": extract_plain,
        ".md": extract_plain,
        ".markdown": extract_plain,
        ".html": extract_html,
        ".htm": extract_html,
        ".pdf": extract_pdf,
        ".docx": extract_docx,
        ".jsonl": extract_jsonl,
    }
)


def extractor_for(doc: Document) -> Extractor:
    """The extractor for ``doc``'s suffix (case-insensitive), or ``unsupported``."""
    suffix = PurePosixPath(doc.path).suffix.lower()
    extractor = EXTRACTORS.get(suffix)
    if extractor is None:
        known = ", ".join(sorted(EXTRACTORS))
        shown = repr(suffix) if suffix else "(no suffix)"
        raise DocumentError(
            "unsupported", f"{doc.path}: unsupported file type {shown}; docroute reads {known}"
        )
    return extractor


def extract_text(
    doc: Document,
    *,
    max_bytes: int,
    options: ExtractOptions | Mapping[str, str] | None = None,
) -> ExtractedText:
    """The text of ``doc``, exactly as decoded; ``DocumentError`` for a bad document.

    doc = Document.at(root, root / "a.md", 6)      # a file holding b"# Hi\\r\\n"
    extract_text(doc, max_bytes=1_000).text         # '# Hi\\r\\n', newlines kept
    extract_text(records, max_bytes=1_000, options={"jsonl_text_field": "body"})

    ``options`` (see ``ExtractOptions``) are checked first: a bad key is a ``ValueError``.
    """
    opts = ExtractOptions.of(options)
    extractor = extractor_for(doc)
    _check_size(doc, doc.size_bytes, max_bytes)
    data = _read(doc, max_bytes)
    if not data:
        raise DocumentError("empty", f"{doc.path}: file is empty (0 bytes)")
    extracted = extractor(doc, data, opts)
    if not extracted.text or extracted.text.isspace():
        raise DocumentError("empty", f"{doc.path}: no text, only whitespace ({len(data)} bytes)")
    return extracted


def _check_size(doc: Document, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise DocumentError(
            "too_large",
            f"{doc.path}: {size:,} bytes is over the {max_bytes:,}-byte limit, so it was not read",
        )


def _read(doc: Document, max_bytes: int) -> bytes:
    """At most ``max_bytes`` bytes; one more means the file grew past the limit."""
    try:
        with open(doc.abs_path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DocumentError("unreadable", f"{doc.path}: cannot be read ({reason})") from exc
    if len(data) > max_bytes:
        _check_size(doc, len(data), max_bytes)  # "more than" max_bytes: it grew since discovery
    return data
