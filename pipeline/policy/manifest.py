"""The residency manifest: a file that gives named documents their allowed regions.

    manifest = load_manifest(Path("residency.csv"))
    manifest.lookup(doc.doc_id)     # ManifestEntry(regions=("eu",), line=12, key="eu/a.md")
    manifest.rule(entry)            # "manifest:residency.csv:12"

Two formats, told apart by suffix. CSV (``.csv``) has a header row naming its columns,
then one document per row; rows whose first cell starts with ``#`` are comments::

    path,regions
    eu/contracts/msa.md,eu
    us/reports/q3.md,us;eu
    legal/hold.txt,deny

JSON Lines (``.jsonl``) has one object per line::

    {"path": "eu/contracts/msa.md", "regions": ["eu"]}
    {"doc_id": "3f1c…", "regions": "deny"}

Columns (keys) are ``path`` (relative to ``corpus.path``, as the documents table shows
it) or ``doc_id`` (the 32-hex id of the documents table), one of them per row, and
``regions``: region names separated by ``;`` or spaces (a list in JSONL), or ``deny``
for none. A path and its doc id name the same document.

Everything is checked when the config is loaded: a missing file, an unknown column, a
row without exactly one key, a bad region name or the same document twice with different
regions is a ``ConfigError`` naming the file, the line and what was expected. The same
document twice with the same regions is accepted (the first line is the rule).
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.errors import ConfigError
from pipeline.models import stable_id

__all__ = ["Manifest", "ManifestEntry", "load_manifest", "parse_regions"]

#: The same names ``pipeline.config_sections.Region`` accepts.
REGION = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DOC_ID = re.compile(r"^[0-9a-f]{32}$")
KEYS = ("path", "doc_id")
COLUMNS = (*KEYS, "regions")
_SEPARATORS = re.compile(r"[;\s]+")


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    regions: tuple[str, ...]
    """Allowed regions; empty for ``deny``."""
    line: int
    """Line of the manifest that gave them (1 = the CSV header / first JSONL line)."""
    key: str
    """The path or doc id as written."""


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    entries: Mapping[str, ManifestEntry]
    """By doc id (a path key is stored under its doc id)."""

    def lookup(self, doc_id: str) -> ManifestEntry | None:
        return self.entries.get(doc_id)

    def rule(self, entry: ManifestEntry) -> str:
        """What a chunk records as its residency rule: ``manifest:<file name>:<line>``."""
        return f"manifest:{self.path.name}:{entry.line}"

    def regions(self) -> set[str]:
        """Every region the manifest names."""
        return {r for e in self.entries.values() for r in e.regions}


def load_manifest(path: Path) -> Manifest:
    """Read and check ``path`` (see the module docstring); ``ConfigError`` if it is bad.

    Parsed once per version of the file (its size and modification time), so loading the
    config again costs nothing.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(
            f"corpus.residency_manifest: {path} cannot be read ({exc.strerror}); expected a "
            ".csv or .jsonl file (relative to the config file)"
        ) from None
    return _load(path, stat.st_mtime_ns, stat.st_size)


def parse_regions(value: Any) -> tuple[str, ...] | None:
    """``value`` as regions: a list of names (``[]``: none), one name, names separated by
    ``;`` or spaces, or ``deny`` (none). ``None`` when it is none of those.

        parse_regions("eu;ch")   # ("eu", "ch")
        parse_regions("deny")    # ()
        parse_regions(["EU"])    # None: not a region name
    """
    if isinstance(value, str):
        names: list[Any] = [n for n in _SEPARATORS.split(value) if n]
        if names == ["deny"]:
            return ()
        if not names:
            return None
    elif isinstance(value, list):
        names = value
        if not names:
            return ()
    else:
        return None
    if all(isinstance(n, str) and REGION.match(n) and n != "deny" for n in names):
        return tuple(dict.fromkeys(names))
    return None


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int, size: int) -> Manifest:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ConfigError(
            f"corpus.residency_manifest: {path}: unsupported file type {suffix or '(none)'!r}; "
            "expected .csv or .jsonl"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    rows = _csv_rows(path, text) if suffix == ".csv" else _jsonl_rows(path, text)
    entries: dict[str, ManifestEntry] = {}
    for line, row in rows:
        doc_id, entry = _entry(path, line, row)
        _add(path, entries, doc_id, entry)
    return Manifest(path=path, entries=entries)


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            _check_columns(path, line, header)
            continue
        if len(cells) != len(header):
            raise ConfigError(
                f"{path}:{line}: {len(cells)} cell(s); expected {len(header)} "
                f"({', '.join(header)}), as in the header"
            )
        yield line, {k: v.strip() for k, v in zip(header, cells, strict=True) if v.strip()}
    if header is None:
        raise ConfigError(
            f"{path}: no header row; expected a first row naming the columns: path or "
            "doc_id, and regions"
        )


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise ConfigError(
                f'{path}:{line}: not a JSON object; expected {{"path": …, "regions": [...]}}'
            )
        _check_columns(path, line, list(row))
        yield line, {k: v for k, v in row.items() if v not in (None, "")}


def _check_columns(path: Path, line: int, names: list[str]) -> None:
    expected = "path or doc_id, and regions"
    for name in names:
        if name not in COLUMNS:
            raise ConfigError(f"{path}:{line}: unknown column {name!r}; expected {expected}")
    if "regions" not in names or not any(k in names for k in KEYS):
        raise ConfigError(f"{path}:{line}: columns {names}; expected {expected}")


def _entry(path: Path, line: int, row: dict[str, Any]) -> tuple[str, ManifestEntry]:
    keys = [k for k in KEYS if k in row]
    if len(keys) != 1:
        raise ConfigError(f"{path}:{line}: expected exactly one of path, doc_id; got {keys}")
    key = str(row[keys[0]])
    doc_id = _doc_id(path, line, key) if keys[0] == "doc_id" else stable_id(_rel(path, line, key))
    regions = parse_regions(row.get("regions"))
    if regions is None:
        raise ConfigError(
            f"{path}:{line}: regions {row.get('regions')!r} are not valid; expected region "
            "names (lower-case letters, digits, '-' and '_', at most 32 characters) "
            "separated by ';' or spaces, or deny"
        )
    return doc_id, ManifestEntry(regions=regions, line=line, key=key)


def _doc_id(path: Path, line: int, key: str) -> str:
    if not DOC_ID.match(key):
        raise ConfigError(
            f"{path}:{line}: doc_id {key!r}; expected 32 hex characters, as in the documents table"
        )
    return key


def _rel(path: Path, line: int, key: str) -> str:
    rel = PurePosixPath(key.removeprefix("./"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ConfigError(
            f"{path}:{line}: path {key!r}; expected a path relative to corpus.path "
            "(e.g. eu/contracts/msa.md)"
        )
    return rel.as_posix()


def _add(path: Path, entries: dict[str, ManifestEntry], doc_id: str, entry: ManifestEntry) -> None:
    seen = entries.get(doc_id)
    if seen is None:
        entries[doc_id] = entry
    elif set(seen.regions) != set(entry.regions):
        raise ConfigError(
            f"{path}:{entry.line}: {entry.key} is given regions {_show(entry.regions)}, but "
            f"line {seen.line} ({seen.key}) gave {_show(seen.regions)}; expected one entry "
            "per document (or the same regions)"
        )


def _show(regions: tuple[str, ...]) -> str:
    return "[" + ", ".join(regions) + "]" if regions else "deny"
