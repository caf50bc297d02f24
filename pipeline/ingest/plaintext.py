"""Plain text (``.txt``, ``.md``): bytes to text, never crashing on an encoding.

    extract_plain(doc, "café\\r\\n".encode("cp1252"), ExtractOptions())
    # ExtractedText(text='café\\r\\n', encoding='cp1252',
    #               note='invalid UTF-8 at byte 3: decoded as cp1252')

UTF-8 first (a leading byte-order mark is dropped); bytes that are not UTF-8 are read as
cp1252 (what Windows tools write), and when even that fails, as latin-1, which accepts
every byte. The text is kept exactly as decoded, newlines included: chunk offsets refer to
it. Markdown is kept as written too; its blank lines and headings are what the chunker
splits on. YAML front matter (``---`` … ``---`` at the top) stays in the text and is also
read into ``ExtractedText.metadata``.

Binary content is refused as ``binary``: a file that starts like a compressed or container
format (gzip, zip, PDF) is named as such, and any other file with a NUL byte in its first
8 KiB "looks binary".
"""

from __future__ import annotations

import codecs
from dataclasses import replace

from pipeline.ingest.base import DocumentError, ExtractedText, ExtractOptions
from pipeline.ingest.frontmatter import front_matter
from pipeline.models import Document

__all__ = ["BINARY_SNIFF_BYTES", "decode_text", "extract_plain"]

#: A NUL byte this close to the start means "not text" (as git and grep decide).
BINARY_SNIFF_BYTES = 8192

#: Leading bytes of formats that are never text, and what the error message says of them.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "is gzip-compressed, not text; decompress it (gunzip) first"),
    (b"PK\x03\x04", "is a zip archive (a .docx or .xlsx is one too), not text"),
    (b"%PDF-", "is a PDF, not text; name it .pdf to have it read as one"),
)

_FALLBACKS = ("cp1252", "latin-1")


def extract_plain(doc: Document, data: bytes, options: ExtractOptions) -> ExtractedText:
    """The text of a plain-text or markdown file (see the module docstring), with its YAML
    front matter, if any, as ``metadata`` (``pipeline.ingest.frontmatter``)."""
    decoded = decode_text(doc, data)
    meta = front_matter(decoded.text, field=options.metadata_field)
    return decoded if meta is None else replace(decoded, metadata=(meta,))


def decode_text(doc: Document, data: bytes) -> ExtractedText:
    """Decode ``data`` as UTF-8, else cp1252, else latin-1; ``DocumentError`` if binary.

    Shared by every text-based format (html, jsonl), so they all sniff and fall back the
    same way.
    """
    for magic, what in SIGNATURES:
        if data.startswith(magic):
            raise DocumentError("binary", f"{doc.path}: {what}")
    nul = data.find(b"\x00", 0, BINARY_SNIFF_BYTES)
    if nul != -1:
        raise DocumentError(
            "binary", f"{doc.path}: looks binary (NUL byte at offset {nul}), not text"
        )
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    data = data[bom:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _fallback(data, bad_at=bom + exc.start)
    return ExtractedText(text=text, encoding="utf-8-sig" if bom else "utf-8")


def _fallback(data: bytes, *, bad_at: int) -> ExtractedText:
    for encoding in _FALLBACKS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        note = f"invalid UTF-8 at byte {bad_at}: decoded as {encoding}"
        return ExtractedText(text=text, encoding=encoding, note=note)
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover
