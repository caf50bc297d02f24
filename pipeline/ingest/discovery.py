"""Finding the corpus's documents: a sorted, streaming walk matched with path globs.

    for doc in discover(Path("corpus"), include=["**/*.md"], exclude=["drafts/**"]):
        doc.path        # "eu/contracts/msa.md": relative, POSIX, what globs and users see

Documents come one at a time, in the order of their relative paths (code point order,
the same as ``sorted(doc.path for doc in ...)``), so a run sees the same order every
time and a million-file corpus never sits in memory.

The walk skips hidden entries (a name starting with "."), never enters a symlinked
folder (so a link to a parent cannot loop, nor visit a folder twice), and follows
symlinked files. Only regular files are yielded; a folder that cannot be listed is
logged and skipped, so one bad folder does not stop the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pipeline.globs import compile_glob
from pipeline.models import Document

__all__ = ["discover"]

log = logging.getLogger(__name__)


def discover(root: Path, include: Sequence[str], exclude: Sequence[str] = ()) -> Iterator[Document]:
    """Stream the documents under ``root`` whose path matches an ``include`` glob and no
    ``exclude`` glob (an empty ``include`` matches nothing).

    Globs are checked at the call, so a bad one is a ``ValueError`` before any walking; a
    ``root`` that is not a readable folder is an ``OSError`` at the first ``next()``.
    """
    root = Path(root).absolute()
    included = [compile_glob(p) for p in include]
    excluded = [compile_glob(p) for p in exclude]

    def wanted(rel: str) -> bool:
        return any(p.match(rel) for p in included) and not any(p.match(rel) for p in excluded)

    return _documents(root, wanted)


def _documents(root: Path, wanted: Callable[[str], bool]) -> Iterator[Document]:
    for rel, entry in _walk(root, "", top=True):
        if not wanted(rel):
            continue
        try:
            size = entry.stat().st_size
        except OSError as exc:  # gone since it was listed
            log.warning("skipping %s: cannot stat it (%s)", rel, exc)
            continue
        yield Document.at(root, root / rel, size)


def _walk(
    folder: Path, prefix: str, *, top: bool = False
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(relative path, entry) of the regular files under ``folder``, in path order."""
    for entry in _sorted_entries(folder, prefix, top=top):
        rel = prefix + entry.name
        if _is_real_dir(entry):
            yield from _walk(folder / entry.name, rel + "/")
        elif _is_file(entry):
            yield rel, entry


def _sorted_entries(folder: Path, prefix: str, *, top: bool) -> list[os.DirEntry[str]]:
    """Visible entries of ``folder``; a folder sorts as "name/" so walk order = path order."""
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as exc:
        if top:
            raise
        log.warning("skipping folder %s: cannot list it (%s)", prefix or ".", exc)
        return []
    entries.sort(key=lambda e: e.name + "/" if _is_real_dir(e) else e.name)
    return entries


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    """A folder that is not a symlink (``is_dir`` follows links unless told not to)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    """A regular file, through a symlink too; not a dangling link, a fifo or a device."""
    try:
        return entry.is_file()
    except OSError:
        return False
