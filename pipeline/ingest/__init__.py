"""Ingest: find the corpus's documents and turn each into text.

    for doc in discover(root, include=["**/*.txt", "**/*.md"], exclude=["drafts/**"]):
        try:
            extracted = extract_text(doc, max_bytes=50 * 1024 * 1024)
        except DocumentError as exc:
            ...  # record (doc, exc.reason, exc.message) and go on with the next document

Modules: ``discovery`` (the walk), ``extraction`` (the suffix → extractor table and the
checks every format shares), ``plaintext`` (.txt, .md), ``base`` (the shared types).
"""

from pipeline.ingest.base import DocumentError, DocumentErrorReason, ExtractedText, Extractor
from pipeline.ingest.discovery import discover
from pipeline.ingest.extraction import EXTRACTORS, extract_text

__all__ = [
    "EXTRACTORS",
    "DocumentError",
    "DocumentErrorReason",
    "ExtractedText",
    "Extractor",
    "discover",
    "extract_text",
]
