"""What every extractor returns or raises, and the shape of an extractor.

    def extract_csv(doc: Document, data: bytes) -> ExtractedText: ...
    # then one line in ``EXTRACTORS`` (``pipeline/ingest/extraction.py``): ".csv": extract_csv

An extractor gets the file's bytes (already read, size-checked and known to be non-empty)
and returns the text the chunker will cut; offsets of chunks refer to that text exactly.
A problem with one document is a ``DocumentError``: the run records it and goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from pipeline.models import Document

__all__ = ["DocumentError", "DocumentErrorReason", "ExtractedText", "Extractor"]

DocumentErrorReason: TypeAlias = Literal[
    "empty", "binary", "too_large", "unreadable", "unsupported"
]


class DocumentError(Exception):
    """A per-document problem; the run records it as the document's error row and goes on.

        try:
            extracted = extract_text(doc, max_bytes=50_000_000)
        except DocumentError as exc:
            record(doc, reason=exc.reason, message=exc.message)

    ``reason`` is a stable keyword for tables and counts; ``message`` is a sentence that
    names the file and the problem, for people.
    """

    reason: DocumentErrorReason
    message: str

    def __init__(self, reason: DocumentErrorReason, message: str) -> None:
        super().__init__(reason, message)  # args as given, so the error pickles
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class ExtractedText:
    """A document's text exactly as decoded, and how it was decoded.

    ``note`` says what a reader of the run report should know, e.g.
    ``"invalid UTF-8 at byte 17: decoded as cp1252"``; ``None`` when nothing happened.
    """

    text: str
    encoding: str
    note: str | None = None
    page_starts: tuple[int, ...] = ()
    """For paged formats: the offset in ``text`` where each page begins (page 1 first)."""


#: Turns a document's bytes into text, or raises ``DocumentError``.
Extractor: TypeAlias = Callable[[Document, bytes], ExtractedText]
