"""Large plain-text documents, read in blocks so memory stays flat whatever their size.

    if should_stream(doc):
        text = open_text_stream(doc, max_bytes=max_bytes)   # checks, encoding: DocumentError
        for block in text.blocks():                          # 1 MiB of text at a time
            ...

A 100 MB ``.txt`` read whole is a 100 MB string plus its bytes; streamed, the chunker holds
about one window. The checks are those of ``decode_text``: signatures and NUL bytes in the
first 8 KiB mean ``binary``, and the encoding is UTF-8 (a BOM dropped), else cp1252, else
latin-1. The encoding is settled by a first pass over the file that keeps no text, so a
fallback discovered at byte 90,000,000 never means chunks were already produced in the
wrong encoding.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.ingest.base import DocumentError
from pipeline.ingest.plaintext import BINARY_SNIFF_BYTES, SIGNATURES
from pipeline.models import Document

#: Plain-text files larger than this are streamed instead of read whole.
STREAM_ABOVE_BYTES = 8 * 1024 * 1024
STREAMABLE = frozenset({".txt", ".md", ".markdown"})
BLOCK_BYTES = 1 << 20
_FALLBACKS = ("cp1252", "latin-1")


def should_stream(doc: Document) -> bool:
    return doc.abs_path.suffix.lower() in STREAMABLE and doc.size_bytes > STREAM_ABOVE_BYTES


@dataclass(frozen=True, slots=True)
class TextStream:
    doc: Document
    encoding: str
    note: str | None

    def blocks(self) -> Iterator[str]:
        """The document's text, exactly as ``decode_text`` would give it, a block at a time."""
        decoder = codecs.getincrementaldecoder(self.encoding)()
        for data in _chunks_of(self.doc):
            text = decoder.decode(data)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail


def open_text_stream(doc: Document, *, max_bytes: int) -> TextStream:
    """Check ``doc`` and settle its encoding; ``DocumentError`` as ``extract_text`` would."""
    if doc.size_bytes > max_bytes:
        raise DocumentError(
            "too_large",
            f"{doc.path}: {doc.size_bytes:,} bytes is over the {max_bytes:,}-byte limit, "
            "so it was not read",
        )
    head = _head(doc)
    if not head:
        raise DocumentError("empty", f"{doc.path}: file is empty (0 bytes)")
    for magic, what in SIGNATURES:
        if head.startswith(magic):
            raise DocumentError("binary", f"{doc.path}: {what}")
    nul = head.find(b"\x00")
    if nul != -1:
        raise DocumentError(
            "binary", f"{doc.path}: looks binary (NUL byte at offset {nul}), not text"
        )
    bad_at = _first_invalid(doc, "utf-8-sig")
    if bad_at is None:
        bom = head.startswith(codecs.BOM_UTF8)
        return TextStream(doc, "utf-8-sig" if bom else "utf-8", None)
    for encoding in _FALLBACKS:
        if _first_invalid(doc, encoding) is None:
            note = f"invalid UTF-8 at byte {bad_at}: decoded as {encoding}"
            return TextStream(doc, encoding, note)
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def _head(doc: Document) -> bytes:
    try:
        with open(doc.abs_path, "rb") as f:
            return f.read(BINARY_SNIFF_BYTES)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DocumentError("unreadable", f"{doc.path}: cannot be read ({reason})") from exc


def _chunks_of(doc: Document) -> Iterator[bytes]:
    try:
        with open(doc.abs_path, "rb") as f:
            while data := f.read(BLOCK_BYTES):
                yield data
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DocumentError("unreadable", f"{doc.path}: cannot be read ({reason})") from exc


def _first_invalid(doc: Document, encoding: str) -> int | None:
    """The byte offset of the first byte ``encoding`` cannot decode, or None."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    try:
        for data in _chunks_of(doc):
            decoder.decode(data)
            offset += len(data)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return offset + exc.start
    return None
