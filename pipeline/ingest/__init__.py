"""Ingest: find the corpus's documents and turn each into text.

    for doc in discover(root, include=["**/*.txt", "**/*.md"], exclude=["drafts/**"]):
        try:
            extracted = extract_text(doc, max_bytes=50 * 1024 * 1024)
        except DocumentError as exc:
            ...  # record (doc, exc.reason, exc.message) and go on with the next document

    # or many at once, PDFs and Word files parsed in worker processes, order kept, each
    # given at most timeout_s (then a DocumentError "timeout", and its worker is killed):
    for doc, got in extract_many(discover(root, ["**"]), max_bytes=50 * MB, workers=4,
                                 timeout_s=120):
        ...  # got is an ExtractedText or a DocumentError

Modules: ``discovery`` (the walk), ``extraction`` (the suffix → extractor table and the
checks every format shares), ``pool`` (``extract_many``, on pebble's process pool,
whose workers can be killed one at a time), ``stream`` (large text files in blocks), one
module per format
(``plaintext`` for .txt and .md, ``html_page``, ``pdf``, ``docx_file``, ``jsonl``),
``frontmatter`` (the YAML block atop .md/.txt files: document metadata), and ``base``
(the shared types).
"""

from pipeline.ingest.base import (
    DocumentError,
    DocumentErrorReason,
    ExtractedText,
    ExtractOptions,
    Extractor,
    Record,
    Unparsed,
)
from pipeline.ingest.discovery import discover
from pipeline.ingest.extraction import EXTRACTORS, extract_text
from pipeline.ingest.pool import POOLED_SUFFIXES, Extracted, extract_many

__all__ = [
    "EXTRACTORS",
    "POOLED_SUFFIXES",
    "DocumentError",
    "DocumentErrorReason",
    "ExtractOptions",
    "Extracted",
    "ExtractedText",
    "Extractor",
    "Record",
    "Unparsed",
    "discover",
    "extract_many",
    "extract_text",
]
