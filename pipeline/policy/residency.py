"""Which regions a document may be sent to.

    rules = Residency.from_config(cfg.corpus)
    rules.decide("eu/contracts/msa.md", metadata=extracted.metadata)
    # Decision(regions=("eu",), rule="eu/**")
    rules.decide("eu/crm.jsonl#c-17", metadata=({"residency": ["ch"]},), file="eu/crm.jsonl")
    # Decision(regions=("ch",), rule="metadata:residency")

Four sources, the most specific first; the first that speaks decides, alone:

1. the document's own metadata (``corpus.residency_field``, default ``residency``): a key
   of the YAML front matter of a ``.md``/``.txt`` file, or a field of a ``.jsonl``
   record. Each record is its own document (``data.jsonl#<key>``, see
   ``pipeline.ingest.jsonl``) and has its own field's answer; with
   ``corpus.jsonl.per_record: false`` the file is one document, so when its records
   disagree it gets the **intersection** of their regions, the most restrictive answer
   (records without the field add no restriction; disjoint records leave no region at
   all). A value that is not regions (``residency: 42``, broken front matter) allows
   nothing. Rule: ``metadata:residency``, ``metadata:residency:intersection`` or
   ``metadata:residency:invalid``;
2. the manifest (``corpus.residency_manifest``), by doc id or path; for a record, an
   entry for the record (``data.jsonl#c-17``) first, then one for its file. Rule:
   ``manifest:<file name>:<line>``;
3. the path globs of ``corpus.residency``, in order, the first match; a record's file
   path is matched (``eu/**`` and ``**/*.jsonl`` keep working). Rule: the glob;
4. ``corpus.residency_default``. Rule: ``default``, or ``default:deny`` when it is
   ``deny``, which gives no region at all, so the document's chunks fail with
   ``no_route`` and nothing is sent anywhere. There is no implicit "any region".

Regions are written as a list (``[eu, ch]``), one name, names separated by ``;`` or
spaces, or ``deny`` (none). Every chunk records its ``regions`` and its ``rule``.

Without ``metadata`` (a rerun knows only a chunk's path), ``decide`` reads the
document's metadata from the file under ``corpus.path``; a file that is gone leaves the
other sources to decide. A record's path reads that record of its file: a record that is
no longer there (or whose file is gone) allows no region, since its own field may have
been stricter than the rules for its file's path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.config_sections import CorpusConfig
from pipeline.globs import glob_match
from pipeline.ingest.base import DocumentError, ExtractOptions, Unparsed
from pipeline.ingest.extraction import extract_text
from pipeline.ingest.frontmatter import read_front_matter
from pipeline.ingest.jsonl import split_record_path
from pipeline.models import Document, stable_id
from pipeline.policy.manifest import Manifest, load_manifest, parse_regions

__all__ = ["METADATA_SUFFIXES", "Decision", "Residency", "extract_options", "unserved_warning"]

log = logging.getLogger(__name__)

#: Formats whose documents can carry their own residency (front matter, record fields).
METADATA_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".jsonl"})

Metadata = Sequence[Mapping[str, Any]]


def extract_options(corpus: CorpusConfig) -> ExtractOptions:
    """The extraction settings of ``corpus`` (JSONL fields, the metadata field)."""
    return ExtractOptions(
        jsonl_text_field=corpus.jsonl.text_field,
        jsonl_id_field=corpus.jsonl.id_field,
        metadata_field=corpus.residency_field or "residency",
    )


@dataclass(frozen=True, slots=True)
class Decision:
    regions: tuple[str, ...]
    rule: str
    """What decided: ``metadata:<field>[:intersection|:invalid]``,
    ``manifest:<file>:<line>``, the matching glob, ``default`` or ``default:deny``."""


@dataclass(frozen=True, slots=True)
class Residency:
    rules: tuple[tuple[str, tuple[str, ...]], ...]
    default: tuple[str, ...] | None  # None: deny
    field: str | None = None
    """The metadata field; ``None``: documents' metadata is not read."""
    manifest: Manifest | None = None
    root: Path | None = None
    """``corpus.path``: where ``decide`` reads metadata it was not given."""
    options: ExtractOptions = dataclass_field(default_factory=ExtractOptions)
    """How documents are read when ``decide`` reads their metadata itself."""
    _last: list[Any] = dataclass_field(
        default_factory=lambda: [None, ()], compare=False, repr=False
    )

    @classmethod
    def from_config(cls, corpus: CorpusConfig) -> Residency:
        rules = tuple((r.match, tuple(r.regions)) for r in corpus.residency)
        default = None if corpus.residency_default == "deny" else tuple(corpus.residency_default)
        path = corpus.residency_manifest
        manifest = None if path is None else load_manifest(path)
        options = extract_options(corpus)
        return cls(rules, default, corpus.residency_field, manifest, corpus.path, options)

    def decide(
        self, path: str, metadata: Metadata | None = None, *, file: str | None = None
    ) -> Decision:
        """The regions of the document at ``path`` (relative to ``corpus.path``).

        ``metadata`` is the document's ``ExtractedText.metadata`` (a JSONL record's: its
        ``Record.metadata``); ``None`` reads it from the file (see the module docstring).
        ``file`` is the file a record's ``path`` belongs to, when the caller knows it;
        otherwise it is read from ``path`` (``data.jsonl#c-17``: ``data.jsonl``).
        """
        file = self.file_of(path) if file is None else file
        if self.field is not None:
            if metadata is None:
                metadata = self._metadata_of(path, file)
            found = self._by_metadata(metadata)
            if found is not None:
                return found
        if self.manifest is not None:
            for key in dict.fromkeys((path, file)):  # the record's own entry first
                entry = self.manifest.lookup(stable_id(key))
                if entry is not None:
                    return Decision(regions=entry.regions, rule=self.manifest.rule(entry))
        for pattern, regions in self.rules:
            if glob_match(pattern, file):
                return Decision(regions=regions, rule=pattern)
        if self.default is None:
            return Decision(regions=(), rule="default:deny")
        return Decision(regions=self.default, rule="default")

    def _by_metadata(self, metadata: Metadata) -> Decision | None:
        assert self.field is not None
        values = [m[self.field] for m in metadata if self.field in m]
        if not values:
            return None
        rule = f"metadata:{self.field}"
        parsed = [None if isinstance(v, Unparsed) else parse_regions(v) for v in values]
        if any(p is None for p in parsed):
            return Decision(regions=(), rule=rule + ":invalid")
        distinct = list({frozenset(p): p for p in parsed if p is not None}.values())
        regions = distinct[0]
        for other in distinct[1:]:
            regions = tuple(r for r in regions if r in other)
        return Decision(
            regions=regions, rule=rule if len(distinct) == 1 else rule + ":intersection"
        )

    def file_of(self, path: str) -> str:
        """The file holding the document at ``path``: ``path`` itself, or for a JSONL
        record's path (``data.jsonl#c-17``) its file's. A file whose own name has
        ``.jsonl#`` in it is told apart by what is under ``corpus.path``."""
        splits = split_record_path(path)
        if not splits or (self.root is not None and (self.root / path).is_file()):
            return path
        on_disk = [f for f, _ in splits if self.root is not None and (self.root / f).is_file()]
        return (on_disk or [splits[0][0]])[0]

    def _metadata_of(self, path: str, file: str) -> Metadata:
        """The metadata of the document at ``path`` (in ``file``), read from disk (the last
        file's is kept, as a rerun asks for each chunk of a document in turn)."""
        if self.root is None or PurePosixPath(file).suffix.lower() not in METADATA_SUFFIXES:
            return ()
        if self._last[0] != file:
            self._last[:] = [file, _read_metadata(self.root, file, self.options)]
        read: _FileMetadata = self._last[1]
        if file == path:
            return read.whole
        return _record_metadata(read, path, file, self.options.metadata_field)

    def unmatched(self, paths: Iterable[str]) -> list[str]:
        """Sentences about each path rule of ``corpus.residency`` that matches none of
        ``paths`` (the corpus's documents): a glob with a typo decides nothing, and the
        documents it was meant for fall through to later rules or the default."""
        left = dict(enumerate(self.rules))
        count = 0
        for path in paths:
            count += 1
            for i in [i for i, (pattern, _) in left.items() if glob_match(pattern, path)]:
                del left[i]
            if not left:
                return []
        return [
            f"corpus.residency[{i}] ({pattern}) matches none of the corpus's {count} "
            "document(s): check its glob (paths are relative to corpus.path)"
            for i, (pattern, _) in left.items()
        ]

    def unserved(self, served: Iterable[str]) -> list[str]:
        """Sentences about each rule (glob, default, manifest entries) whose every allowed
        region no endpoint serves: its documents will fail with ``no_route``.

        A rule that allows ``[eu, us]`` with only ``eu`` served says nothing: its documents
        go to ``eu``. Manifest entries with the same regions are one sentence.
        """
        served = set(served)
        found = [
            unserved_warning(regions, f"corpus.residency[{i}] ({pattern})", served)
            for i, (pattern, regions) in enumerate(self.rules)
        ]
        found.append(unserved_warning(self.default or (), "corpus.residency_default", served))
        if self.manifest is not None:
            groups: dict[tuple[str, ...], list[str]] = {}
            for entry in self.manifest.entries.values():
                groups.setdefault(entry.regions, []).append(self.manifest.rule(entry))
            for regions, rules in groups.items():
                more = f" and {len(rules) - 1} more entries" if len(rules) > 1 else ""
                found.append(unserved_warning(regions, rules[0] + more, served))
        return [line for line in found if line is not None]


def unserved_warning(regions: Sequence[str], where: str, served: Iterable[str]) -> str | None:
    """The start-up warning for documents ``where`` decides, when none of their ``regions``
    is served (None when one is, or when there are none: an explicit deny).

    >>> unserved_warning(("ch",), "corpus.residency[0] (ch/**)", {"eu"})[:47]
    "region 'ch' (corpus.residency[0] (ch/**)) is se"
    >>> unserved_warning(("eu", "us"), "default", {"eu"}) is None
    True
    """
    if not regions or set(regions) & set(served):
        return None
    named = ", ".join(repr(r) for r in regions)
    what = f"region {named} ({where}) is" if len(regions) == 1 else f"regions {named} ({where}) are"
    return f"{what} served by no configured endpoint: its documents will fail with no_route"


@dataclass(frozen=True, slots=True)
class _FileMetadata:
    """What ``decide`` read of one file: its metadata as a whole, and for JSONL each
    record's by key (``None``: the file is gone or unreadable, and ``missing`` says so)."""

    whole: Metadata
    records: Mapping[str, Metadata] | None = None
    missing: str = "is gone"


def _read_metadata(root: Path, path: str, options: ExtractOptions) -> _FileMetadata:
    """What ``extract_text`` would find; a file that is gone has none, one that cannot be
    read gets ``Unparsed`` (so it is sent nowhere rather than by its path)."""
    file = root / path
    if not file.is_file():
        log.warning("%s: not under %s any more; its own residency cannot be read", path, root)
        return _FileMetadata(())
    field = options.metadata_field
    try:
        if file.suffix.lower() != ".jsonl":
            meta = read_front_matter(file, "utf-8", field=field)
            return _FileMetadata(() if meta is None else (meta,))
        doc = Document.at(root, file, file.stat().st_size)
        got = extract_text(doc, max_bytes=file.stat().st_size, options=options)
    except (OSError, DocumentError) as exc:
        return _FileMetadata(({field: Unparsed(str(exc))},), missing=f"cannot be read ({exc})")
    records = {r.key: () if r.metadata is None else (r.metadata,) for r in got.records}
    return _FileMetadata(got.metadata, records)


def _record_metadata(read: _FileMetadata, path: str, file: str, field: str) -> Metadata:
    """The metadata of the record at ``path`` of ``file``; a record that is not there gets
    ``Unparsed``, so it is sent nowhere rather than by its file's path."""
    key = path[len(file) + 1 :]
    if read.records is not None and key in read.records:
        return read.records[key]
    why = f"{file} {read.missing}" if read.records is None else f"{file} has no record {key!r}"
    log.warning("%s: %s; its own residency cannot be read, so it is sent nowhere", path, why)
    return ({field: Unparsed(why)},)
