"""JSON Lines (``.jsonl``): one record per line, each record's text one section.

    extract_jsonl(doc, b'{"id": "a", "text": "One"}\\nnot json\\n{"id": 2, "text": "Two"}\\n',
                  ExtractOptions())
    # ExtractedText(text='[a]\\nOne\\n\\n[2]\\nTwo', encoding='utf-8',
    #               note="1 of 3 lines skipped: not JSON or no 'text' field")

Which field holds the text and which the id is configuration
(``ExtractOptions.jsonl_text_field``, ``jsonl_id_field``). A record's section is its id
in brackets on a line of its own (left out when the record has none), then its text;
sections are joined by a blank line, so the chunker cuts between records. The whole file
is one document.

Records may carry metadata: the distinct values of ``ExtractOptions.metadata_field``
(default ``residency``) among the usable records become ``ExtractedText.metadata``, one
``{field: value}`` each; residency combines them (records that disagree: the
intersection, see ``pipeline.policy.residency``).

A line that is not a JSON object, or whose text field is missing, not a string or blank,
is skipped and counted in ``note``; blank lines are not counted. A file with no usable
record at all is ``no_text``. Bytes are decoded as for plain text (``decode_text``).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.ingest.base import DocumentError, ExtractedText, ExtractOptions
from pipeline.ingest.plaintext import decode_text
from pipeline.models import Document

__all__ = ["extract_jsonl"]

SECTION_SEPARATOR = "\n\n"


def extract_jsonl(doc: Document, data: bytes, options: ExtractOptions) -> ExtractedText:
    """The records of a JSON Lines file as one text (see the module docstring)."""
    decoded = decode_text(doc, data)
    # split("\n"), not splitlines(): U+2028 and friends may sit unescaped inside a string.
    lines = [line for line in decoded.text.split("\n") if line.strip()]
    sections: list[str] = []
    metadata: dict[str, dict[str, Any]] = {}  # distinct values of the metadata field
    for record in (_record(line, options) for line in lines):
        if record is None:
            continue
        section, meta = record
        sections.append(section)
        if meta is not None:
            metadata.setdefault(json.dumps(meta, sort_keys=True, default=str), meta)
    why = f"not JSON or no {options.jsonl_text_field!r} field"
    if not sections:
        raise DocumentError(
            "no_text", f"{doc.path}: none of its {len(lines)} line(s) is usable: {why}"
        )
    skipped = len(lines) - len(sections)
    notes = [decoded.note] if decoded.note else []
    if skipped:
        notes.append(f"{skipped} of {len(lines)} lines skipped: {why}")
    return ExtractedText(
        text=SECTION_SEPARATOR.join(sections),
        encoding=decoded.encoding,
        note="; ".join(notes) or None,
        metadata=tuple(metadata.values()),
    )


def _record(line: str, options: ExtractOptions) -> tuple[str, dict[str, Any] | None] | None:
    """The record's section and its metadata (``{field: value}``, or ``None`` when it has
    no such field), or ``None`` when the line has no usable record."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, a number too long, nesting too deep
        return None
    if not isinstance(record, dict):
        return None
    text = record.get(options.jsonl_text_field)
    if not isinstance(text, str) or not text.strip():
        return None
    field = options.metadata_field
    meta = {field: record[field]} if field in record else None
    record_id = record.get(options.jsonl_id_field)
    if record_id is None or isinstance(record_id, dict | list):
        return text.strip(), meta
    return f"[{record_id}]\n{text.strip()}", meta
