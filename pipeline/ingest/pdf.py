"""PDF (``.pdf``): the text of each page, pages joined by a blank line, with their offsets.

    got = extract_pdf(doc, data, ExtractOptions())
    got.text[got.page_starts[1]:]        # page 2's text, then the pages after it

Read with pypdf (pure Python, so a hostile file can be slow but cannot crash the
interpreter; ``pipeline.ingest.pool`` runs it in worker processes anyway). What can go
wrong, and what the run records:

- the file needs a password (opening it with an empty one is tried first): ``encrypted``;
- it parses, but no page has any text, as with a scan: ``no_text`` (it needs OCR);
- it does not parse (truncated, corrupt, not a PDF at all): ``unreadable``, with pypdf's
  message. A single page that fails is left empty and named in ``note``.
"""

from __future__ import annotations

import io
import logging

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError

from pipeline.ingest.base import DocumentError, ExtractedText, ExtractOptions
from pipeline.models import Document

__all__ = ["PAGE_SEPARATOR", "extract_pdf"]

PAGE_SEPARATOR = "\n\n"

log = logging.getLogger(__name__)


def extract_pdf(doc: Document, data: bytes, options: ExtractOptions) -> ExtractedText:
    """The text of a PDF, page by page (see the module docstring)."""
    reader = _open(doc, data)
    pages, failed = _page_texts(doc, reader)
    if not any(page.strip() for page in pages):
        raise _no_text(doc, len(pages), failed)
    starts, offset = [], 0
    for page in pages:
        starts.append(offset)
        offset += len(page) + len(PAGE_SEPARATOR)
    note = _failed_note(failed, len(pages)) if failed else None
    return ExtractedText(
        text=PAGE_SEPARATOR.join(pages), encoding="pdf", note=note, page_starts=tuple(starts)
    )


def _open(doc: Document, data: bytes) -> PdfReader:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise DocumentError(
                "encrypted", f"{doc.path}: the PDF is encrypted and needs a password"
            )
        return reader
    except DocumentError:
        raise
    except DependencyError as exc:  # an encryption whose cipher is not installed
        raise DocumentError("encrypted", f"{doc.path}: cannot decrypt the PDF ({exc})") from exc
    except Exception as exc:  # the parser's edge: any failure of pypdf is this file's fault
        raise DocumentError("unreadable", f"{doc.path}: not a readable PDF ({_say(exc)})") from exc


def _page_texts(doc: Document, reader: PdfReader) -> tuple[list[str], list[tuple[int, str]]]:
    """Each page's text ("" for a page that fails), and the (page number, error) failures."""
    try:
        pages = list(reader.pages)
    except Exception as exc:
        raise DocumentError(
            "unreadable", f"{doc.path}: cannot list its pages ({_say(exc)})"
        ) from exc
    texts: list[str] = []
    failed: list[tuple[int, str]] = []
    for number, page in enumerate(pages, start=1):
        try:
            texts.append(page.extract_text().strip())
        except Exception as exc:
            log.warning("%s: page %d: %s", doc.path, number, _say(exc))
            failed.append((number, _say(exc)))
            texts.append("")
    return texts, failed


def _no_text(doc: Document, page_count: int, failed: list[tuple[int, str]]) -> DocumentError:
    if page_count == 0:
        return DocumentError("empty", f"{doc.path}: the PDF has no pages")
    if len(failed) == page_count:
        return DocumentError(
            "unreadable", f"{doc.path}: no page could be read (page 1: {failed[0][1]})"
        )
    return DocumentError(
        "no_text",
        f"{doc.path}: none of its {page_count} page(s) has extractable text; "
        "it looks scanned (images only) and needs OCR",
    )


def _failed_note(failed: list[tuple[int, str]], page_count: int) -> str:
    numbers = ", ".join(str(n) for n, _ in failed[:10]) + (", …" if len(failed) > 10 else "")
    return f"{len(failed)} of {page_count} pages could not be read and are left empty: {numbers}"


def _say(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
