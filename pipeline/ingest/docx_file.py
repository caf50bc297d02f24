"""Word documents (``.docx``): paragraphs and tables in document order.

    extract_docx(doc, data, ExtractOptions()).text
    # 'Report\\nIntro\\nMore intro\\n\\nFigures\\n\\nyear\\tsales\\n2024\\t12'

Read with python-docx. One paragraph is one line. A heading (a paragraph styled
"Title" or "Heading N") is its text on its own line with a blank line before it, so
the chunker cuts between sections; a table is a block of its own, one line per row,
cells separated by tabs (a cell's own line breaks and tabs become spaces, and a merged
cell counts once). Empty paragraphs are dropped.

A file that is not a Word package (truncated, corrupt, another format) is
``unreadable``; an Office file protected by a password (an OLE container, not a zip)
says so in its message.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Literal

import docx
from docx.document import Document as DocxDocument
from docx.table import Table
from docx.text.paragraph import Paragraph

from pipeline.ingest.base import DocumentError, ExtractedText, ExtractOptions
from pipeline.models import Document

__all__ = ["extract_docx"]

#: Leading bytes of an OLE compound file: a password-protected Office file or an old .doc.
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
HEADING_STYLES = re.compile(r"Title|Heading \d")

_CELL_SPACES = re.compile(r"[\t\r\n]+")

_Kind = Literal["heading", "paragraph", "table"]


def extract_docx(doc: Document, data: bytes, options: ExtractOptions) -> ExtractedText:
    """The text of a Word document (see the module docstring)."""
    if data.startswith(OLE_MAGIC):
        raise DocumentError(
            "unreadable",
            f"{doc.path}: is an OLE file, not a .docx: a password-protected Word file "
            "or an old .doc saved under a .docx name",
        )
    try:
        blocks = list(_blocks(docx.Document(io.BytesIO(data))))
    except Exception as exc:  # the parser's edge: any failure of python-docx is the file's
        detail = f"{type(exc).__name__}: {exc}"
        raise DocumentError("unreadable", f"{doc.path}: not a readable .docx ({detail})") from exc
    return ExtractedText(text=_join(blocks), encoding="docx")


def _blocks(document: DocxDocument) -> Iterator[tuple[_Kind, str]]:
    """(kind, text) of each non-empty paragraph and table, in document order."""
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = "\n".join(_rows(item))
            if rows:
                yield "table", rows
        elif isinstance(item, Paragraph) and item.text.strip():
            yield "heading" if _is_heading(item) else "paragraph", item.text.strip()


def _is_heading(paragraph: Paragraph) -> bool:
    style = paragraph.style
    return style is not None and HEADING_STYLES.fullmatch(style.name or "") is not None


def _rows(table: Table) -> Iterator[str]:
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell repeats for every grid column it spans
                continue
            seen.add(id(cell._tc))
            cells.append(_CELL_SPACES.sub(" ", cell.text).strip())
        if any(cells):
            yield "\t".join(cells)


def _join(blocks: list[tuple[_Kind, str]]) -> str:
    """One block per line; a blank line before a heading and around a table (a heading
    stays with the paragraph under it)."""
    parts: list[str] = []
    previous: _Kind | None = None
    for kind, text in blocks:
        if previous is not None:
            follows = kind == "paragraph" and previous != "table"
            parts.append("\n" if follows else "\n\n")
        parts.append(text)
        previous = kind
    return "".join(parts)
