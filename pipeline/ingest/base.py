"""What every extractor returns or raises, and the shape of an extractor.

    def extract_csv(doc: Document, data: bytes, options: ExtractOptions) -> ExtractedText: ...
    # then one line in ``EXTRACTORS`` (``pipeline/ingest/extraction.py``): ".csv": extract_csv

An extractor gets the file's bytes (already read, size-checked and known to be non-empty)
and the run's ``ExtractOptions``, and returns the text the chunker will cut; offsets of
chunks refer to that text exactly. A problem with one document is a ``DocumentError``:
the run records it and goes on. Errors of a parsing library are translated at the edge,
in the extractor, so a malformed file can never raise anything but ``DocumentError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeAlias

from pipeline.models import Document

__all__ = [
    "DocumentError",
    "DocumentErrorReason",
    "ExtractOptions",
    "ExtractedText",
    "Extractor",
    "Record",
    "Unparsed",
]

#: ``encrypted``: needs a password; ``no_text``: parsed, but holds no text (a scanned PDF,
#: a JSONL file without one usable record, a web page that is all navigation);
#: ``timeout``: its parser ran past ``corpus.extract_timeout_s`` and was stopped.
DocumentErrorReason: TypeAlias = Literal[
    "empty",
    "binary",
    "too_large",
    "unreadable",
    "unsupported",
    "encrypted",
    "no_text",
    "timeout",
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
    metadata: tuple[Mapping[str, Any], ...] = ()
    """What the document says about itself, one mapping per part that says anything: the
    YAML front matter of a ``.md``/``.txt`` file (one mapping); for ``.jsonl``, the
    distinct values of ``ExtractOptions.metadata_field`` among its records, each as
    ``{field: value}``. Empty when the document carries no metadata. Residency reads it
    (``pipeline.policy.residency``); the text itself is left as written."""
    records: tuple[Record, ...] = ()
    """For ``.jsonl``: each usable record, where its text sits in ``text``, so a reader can
    make each record its own document (``corpus.jsonl.per_record``). Empty otherwise."""


@dataclass(frozen=True, slots=True)
class Record:
    """One usable record of a JSON Lines file: ``ExtractedText.text[start:end]`` is its text
    (stripped, without the ``[id]`` line above it).

    ``key`` names it within its file, so ``<file path>#<key>`` is its path as a document:
    its id (``ExtractOptions.jsonl_id_field``), or its 1-based line number when it has none;
    a key already taken in the file gets ``~2``, ``~3``, … (``a``, ``a~2``).
    """

    key: str
    line: int
    """1-based line of the file (blank lines counted), for messages."""
    start: int
    end: int
    metadata: Mapping[str, Any] | None
    """``{ExtractOptions.metadata_field: value}``, or ``None`` when it has no such field."""
    size_bytes: int
    """Its line's length in UTF-8."""


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A metadata value that was there but could not be read, e.g. front matter that is
    not valid YAML yet names the metadata field. Readers must treat it as "unknown", never
    as absent: residency denies every region rather than fall back to path rules."""

    why: str


@dataclass(frozen=True, slots=True)
class ExtractOptions:
    """Settings of the extractors that need any; the same for every document of a run.

    ExtractOptions.of({"jsonl_text_field": "body"})  # the others keep their defaults
    ExtractOptions.of({"jsonl_txt_field": "body"})   # ValueError naming the known keys
    """

    jsonl_text_field: str = "text"
    """The field of each JSONL record that holds its text."""
    jsonl_id_field: str = "id"
    """The field of each JSONL record that holds its id: shown as ``[id]`` above its text,
    and its ``Record.key`` (so its path as a document is ``<file>#<id>``)."""
    metadata_field: str = "residency"
    """The metadata field kept from each JSONL record (``ExtractedText.metadata``); front
    matter is kept whole, and this field is what marks broken front matter as ``Unparsed``."""

    @classmethod
    def of(cls, options: ExtractOptions | Mapping[str, str] | None) -> ExtractOptions:
        """``options`` checked: an unknown key or a value that is not a non-empty string is
        a ``ValueError`` (a configuration mistake, not a bad document)."""
        if options is None:
            return cls()
        if isinstance(options, ExtractOptions):
            return options
        known = sorted(f.name for f in fields(cls))
        for key, value in options.items():
            if key not in known:
                raise ValueError(f"unknown extraction option {key!r}; known: {', '.join(known)}")
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"extraction option {key!r} must be a non-empty string, got {value!r}"
                )
        return cls(**options)


#: Turns a document's bytes into text, or raises ``DocumentError``.
Extractor: TypeAlias = Callable[[Document, bytes, ExtractOptions], ExtractedText]
