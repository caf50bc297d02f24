"""JSON Lines (``.jsonl``): one record per line, each record its own document by default.

    got = extract_jsonl(doc, b'{"id": "a", "text": "One"}\\nnot json\\n{"text": "Two"}\\n',
                        ExtractOptions())
    # got.text == '[a]\\nOne\\n\\nTwo', note="1 of 3 lines skipped: not JSON or no 'text' field"
    [(r.key, got.text[r.start : r.end]) for r in got.records]  # [('a', 'One'), ('3', 'Two')]
    record_path("logs/day.jsonl", "a")                          # 'logs/day.jsonl#a'

Which field holds the text and which the id is configuration
(``ExtractOptions.jsonl_text_field``, ``jsonl_id_field``). ``ExtractedText.text`` is every
record as one section, its id in brackets on a line of its own (left out when the record
has none), then its text, sections joined by a blank line; ``ExtractedText.records`` says
where each record's own text sits in it. With ``corpus.jsonl.per_record`` (the default),
``pipeline.corpus`` makes each record its own document at ``<file path>#<key>``
(``Record.key``: its id, else its line number; a repeated key gets ``~2``, ``~3``), with
its own residency and chunk offsets within its own text. Without it the whole file is one
document, its text the joined sections, so the chunker cuts between records.

Records may carry metadata: each record's value of ``ExtractOptions.metadata_field``
(default ``residency``) is its ``Record.metadata``; the distinct values among the usable
records are also ``ExtractedText.metadata``, one ``{field: value}`` each, which residency
combines when the file is one document (records that disagree: the intersection, see
``pipeline.policy.residency``).

A line that is not a JSON object, or whose text field is missing, not a string or blank,
is skipped and counted in ``note``; blank lines are not counted. A file with no usable
record at all is ``no_text``. Bytes are decoded as for plain text (``decode_text``).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.ingest.base import DocumentError, ExtractedText, ExtractOptions, Record
from pipeline.ingest.plaintext import decode_text
from pipeline.models import Document

__all__ = ["extract_jsonl", "record_path", "split_record_path"]

SECTION_SEPARATOR = "\n\n"

#: What joins a file's path and a record's key in the record's path.
KEY_MARK = "#"


def extract_jsonl(doc: Document, data: bytes, options: ExtractOptions) -> ExtractedText:
    """The records of a JSON Lines file as one text, and where each record sits in it
    (see the module docstring)."""
    decoded = decode_text(doc, data)
    sections: list[str] = []
    records: list[Record] = []
    metadata: dict[str, dict[str, Any]] = {}  # distinct values of the metadata field
    keys: set[str] = set()
    counted, end = 0, 0
    # split("\n"), not splitlines(): U+2028 and friends may sit unescaped inside a string.
    for number, line in enumerate(decoded.text.split("\n"), start=1):
        if not line.strip():
            continue
        counted += 1
        parsed = _record(line, options)
        if parsed is None:
            continue
        text, record_id, meta = parsed
        header = "" if record_id is None else f"[{record_id}]\n"
        start = end + (len(SECTION_SEPARATOR) if sections else 0) + len(header)
        sections.append(header + text)
        end = start + len(text)
        key = _unique(_key(record_id, number), keys)
        records.append(Record(key, number, start, end, meta, len(line.encode("utf-8"))))
        if meta is not None:
            metadata.setdefault(json.dumps(meta, sort_keys=True, default=str), meta)
    why = f"not JSON or no {options.jsonl_text_field!r} field"
    if not sections:
        raise DocumentError(
            "no_text", f"{doc.path}: none of its {counted} line(s) is usable: {why}"
        )
    skipped = counted - len(sections)
    notes = [decoded.note] if decoded.note else []
    if skipped:
        notes.append(f"{skipped} of {counted} lines skipped: {why}")
    return ExtractedText(
        text=SECTION_SEPARATOR.join(sections),
        encoding=decoded.encoding,
        note="; ".join(notes) or None,
        metadata=tuple(metadata.values()),
        records=tuple(records),
    )


def record_path(file: str, key: str) -> str:
    """The path of the record ``key`` of the JSON Lines file at ``file``, as a document."""
    return f"{file}{KEY_MARK}{key}"


def split_record_path(path: str) -> list[tuple[str, str]]:
    """Every way of reading ``path`` as ``(file, key)`` with ``file`` ending in ``.jsonl``,
    the shortest file first; empty when ``path`` cannot be a record's.

    >>> split_record_path("logs/day.jsonl#a")
    [('logs/day.jsonl', 'a')]
    >>> split_record_path("odd.jsonl#x.jsonl#7")  # a file may be named so: the caller asks the disk
    [('odd.jsonl', 'x.jsonl#7'), ('odd.jsonl#x.jsonl', '7')]
    """
    mark = ".jsonl" + KEY_MARK
    lower, found = path.lower(), []
    at = lower.find(mark)
    while at != -1:
        cut = at + len(mark) - len(KEY_MARK)
        found.append((path[:cut], path[cut + len(KEY_MARK) :]))
        at = lower.find(mark, at + 1)
    return found


def _record(line: str, options: ExtractOptions) -> tuple[str, Any, dict[str, Any] | None] | None:
    """The record's text (stripped), its id (``None`` when it has none that can be shown)
    and its metadata (``{field: value}``, or ``None`` when it has no such field); ``None``
    when the line has no usable record."""
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
    if isinstance(record_id, dict | list):
        record_id = None
    return text.strip(), record_id, meta


def _key(record_id: Any, number: int) -> str:
    """The record's id as text, or its line number when it has no id (or a blank one)."""
    shown = "" if record_id is None else str(record_id)
    return shown if shown.strip() else str(number)


def _unique(key: str, taken: set[str]) -> str:
    """``key`` as text, or with ``~2``, ``~3``, … when the file already has a record so named."""
    name, n = key, 1
    while name in taken:
        n += 1
        name = f"{key}~{n}"
    taken.add(name)
    return name
