"""Large plain-text documents, read in blocks so memory stays flat whatever their size.

    if should_stream(doc):
        text = open_text_stream(doc, max_bytes=max_bytes)   # checks, encoding: DocumentError
        for block in text.blocks():                          # 1 MiB of text at a time
            ...                                              # DocumentError if it changed

A 100 MB ``.txt`` read whole is a 100 MB string plus its bytes; streamed, the chunker holds
about one window. The checks are those of ``decode_text``: signatures and NUL bytes in the
first 8 KiB mean ``binary``, and the encoding is UTF-8 (a BOM dropped), else cp1252, else
latin-1. The encoding is settled by a first pass over the file that keeps no text, so a
fallback discovered at byte 90,000,000 never means chunks were already produced in the
wrong encoding.

That pass also notes the file's size and modification time. ``blocks`` reads the file
again and raises ``DocumentError("unreadable", ...)`` instead of ending quietly when the
second reading is not of the same file: it cannot be opened any more, a read fails
(``OSError``), it ends early (truncated), runs past the size, or its modification time
moved. The error comes before the text's last block would, so a consumer that cuts the
blocks as they come (``chunk_stream``) never takes a cut-off file for a whole one.
"""

from __future__ import annotations

import codecs
import os
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
class _Seen:
    """The file as the encoding pass read it: what ``blocks`` must find again."""

    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class TextStream:
    doc: Document
    encoding: str
    note: str | None
    seen: _Seen | None = None
    """Size and modification time when the encoding was settled (None: not checked)."""

    def blocks(self) -> Iterator[str]:
        """The document's text, exactly as ``decode_text`` would give it, a block at a time;
        ``DocumentError`` (``unreadable``) if the file changed or failed since it was opened
        (see the module docstring)."""
        decoder = codecs.getincrementaldecoder(self.encoding)()
        offset = 0
        for data in _chunks_of(self.doc, expect=self.seen):
            try:
                text = decoder.decode(data)
            except UnicodeDecodeError as exc:  # same size and time, other bytes
                raise _changed(self.doc, f"byte {offset + exc.start} no longer decodes") from exc
            offset += len(data)
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
    bad_at, seen = _first_invalid(doc, "utf-8-sig")
    if bad_at is None:
        bom = head.startswith(codecs.BOM_UTF8)
        return TextStream(doc, "utf-8-sig" if bom else "utf-8", None, seen)
    for encoding in _FALLBACKS:
        invalid, seen = _first_invalid(doc, encoding)
        if invalid is None:
            note = f"invalid UTF-8 at byte {bad_at}: decoded as {encoding}"
            return TextStream(doc, encoding, note, seen)
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def _head(doc: Document) -> bytes:
    try:
        with open(doc.abs_path, "rb") as f:
            return f.read(BINARY_SNIFF_BYTES)
    except OSError as exc:
        raise _unreadable(doc, exc) from exc


def _chunks_of(doc: Document, *, expect: _Seen | None = None) -> Iterator[bytes]:
    """The file's bytes, a block at a time; with ``expect``, a file that is not the one
    seen before (size, modification time) is a ``DocumentError`` at its end."""
    try:
        with open(doc.abs_path, "rb") as f:
            read = 0
            while data := f.read(BLOCK_BYTES):
                read += len(data)
                if expect is not None and read > expect.size:
                    raise _changed(doc, f"it grew past the {expect.size:,} bytes it had")
                yield data
            if expect is not None:
                _check_same(doc, expect, read, os.fstat(f.fileno()).st_mtime_ns)
    except OSError as exc:
        raise _unreadable(doc, exc) from exc


def _check_same(doc: Document, expect: _Seen, read: int, mtime_ns: int) -> None:
    if read < expect.size:
        raise _changed(doc, f"it ended after {read:,} of its {expect.size:,} bytes")
    if mtime_ns != expect.mtime_ns:
        raise _changed(doc, "its modification time moved")


def _first_invalid(doc: Document, encoding: str) -> tuple[int | None, _Seen | None]:
    """The byte offset of the first byte ``encoding`` cannot decode, or None and the file
    as this pass saw it, whole."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    try:
        with open(doc.abs_path, "rb") as f:
            mtime_ns = os.fstat(f.fileno()).st_mtime_ns
            while data := f.read(BLOCK_BYTES):
                decoder.decode(data)
                offset += len(data)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return offset + exc.start, None
    except OSError as exc:
        raise _unreadable(doc, exc) from exc
    return None, _Seen(offset, mtime_ns)


def _unreadable(doc: Document, exc: OSError) -> DocumentError:
    reason = exc.strerror or type(exc).__name__
    return DocumentError("unreadable", f"{doc.path}: cannot be read ({reason})")


def _changed(doc: Document, how: str) -> DocumentError:
    return DocumentError(
        "unreadable", f"{doc.path}: the file changed while it was being read ({how})"
    )
