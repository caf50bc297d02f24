"""Token counters: what the chunker asks of one, the offline estimate, and tiktoken from
local BPE files, never a download at run time.

    counter = get_counter("tiktoken:o200k_base")   # TokenizerFilesMissing if absent
    counter = get_counter("auto")                  # tiktoken if it can, else the estimate
    counter.name                                   # "tiktoken:o200k_base" or "chars/3.6"

A ``TokenCounter`` has a ``name`` and ``count(text)``; a ``WordCounting`` one (tiktoken)
or a ``LengthCounting`` one (``CharEstimate``) also says how its counts add up, which
lets ``pipeline.windows`` count each window once, or not at all.

tiktoken reads an encoding's BPE file from ``$TIKTOKEN_CACHE_DIR/<sha1 of its URL>``.
``TiktokenCounter`` looks for that file, with the sha256 tiktoken expects, in
``$TIKTOKEN_CACHE_DIR`` and then in the project's ``.tokenizers`` folder; without it the
counter refuses to load rather than fetch. Fill the folder once, from PyPI (the
``litellm`` wheel ships the files), with::

    python -m pipeline.tokens fetch .tokenizers

``ESTIMATE`` is the offline fallback, 3.5 characters per token. Measured on the 101 MB
English corpus of ``bench/chunking.py`` (man pages, licences, copyright files, Python
docstrings), o200k_base gives 4.24 characters per token and cl100k_base 4.27 on the
whole, but single 2048-character windows vary: at 4.0 the estimate under-counts 20% of
them, at 3.5 only 5% (o200k 5.1%, cl100k 4.3%), so 3.5 it is.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import filterfalse
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "ESTIMATE",
    "LITELLM_VERSION",
    "PROJECT_DIR",
    "CharEstimate",
    "LengthCounting",
    "TiktokenCounter",
    "TokenCounter",
    "TokenizerFilesMissing",
    "WordCounting",
    "fetch",
    "get_counter",
]


class TokenCounter(Protocol):
    """Counts tokens the way some model does; ``name`` goes into reports."""

    name: str

    def count(self, text: str) -> int: ...


class WordCounting(TokenCounter, Protocol):
    """A counter whose counts add up over words: cut a text that ends in a non-space
    where ``pipeline.windows`` cuts words (before a space that follows a non-space, or
    that starts an indented line), and ``count(text)`` is the sum of
    ``count_words(parts)``. tiktoken's encodings are so: their pre-tokenizers never join
    across those places. The chunker then counts each window once instead of once per
    candidate end.
    """

    def count_words(self, words: list[str]) -> list[int]: ...


class LengthCounting(TokenCounter, Protocol):
    """A counter whose count depends on the text's length alone, never less for a longer
    text: ``count(text) == count_length(len(text))``. The chunker then counts nothing."""

    def count_length(self, length: int) -> int: ...


class CharEstimate:
    """Offline estimate: one token per ``chars_per_token`` characters (4), rounded up.

    >>> CharEstimate().count("hello"), CharEstimate.name, CharEstimate(3.5).name
    (2, 'chars/4', 'chars/3.5')
    """

    name: str = "chars/4"

    def __init__(self, chars_per_token: float = 4.0) -> None:
        if not chars_per_token > 0:
            raise ValueError(f"chars_per_token must be > 0, got {chars_per_token!r}")
        self.chars_per_token = chars_per_token
        self.name = f"chars/{chars_per_token:g}"

    def count(self, text: str) -> int:
        return self.count_length(len(text))

    def count_length(self, length: int) -> int:
        return math.ceil(length / self.chars_per_token)


# ── tiktoken, from local files only ───────────────────────────────────────────────────

Encoding = Literal["o200k_base", "cl100k_base"]
ENCODINGS: tuple[Encoding, ...] = ("o200k_base", "cl100k_base")

PROJECT_DIR = Path(__file__).resolve().parent.parent / ".tokenizers"
LITELLM_VERSION = "1.109.1"  # any wheel with litellm/litellm_core_utils/tokenizers/ will do
_WHEEL_DIR = "litellm/litellm_core_utils/tokenizers/"
_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"

ESTIMATE = CharEstimate(chars_per_token=3.5)
_KNOWN_WORDS = 200_000  # words whose counts a counter remembers (about 20 MB)
_LOAD_LOCK = threading.Lock()  # tiktoken reads the cache folder from the environment


class TokenizerFilesMissing(RuntimeError):
    """An encoding's BPE file is in none of the folders looked in (listed in ``searched``)."""

    def __init__(self, encoding: str, searched: tuple[Path, ...]) -> None:
        self.encoding, self.searched = encoding, searched
        where = ", ".join(str(p) for p in searched) or "(no folder)"
        super().__init__(
            f"tiktoken's {encoding} file {cache_key(encoding)} is not in {where}; "
            f"get it once with `python -m pipeline.tokens fetch {PROJECT_DIR}` "
            f"(or `make tokenizers`), or point TIKTOKEN_CACHE_DIR at a folder that has it"
        )


class TiktokenCounter:
    """Counts with a tiktoken encoding loaded from local files only.

    >>> TiktokenCounter("cl100k_base").count("hello world")  # doctest: +SKIP
    2
    """

    def __init__(self, encoding: Encoding = "o200k_base") -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.name = f"tiktoken:{encoding}"
        self.encoding = _load(encoding, find_file(encoding))
        self._encode = self.encoding._core_bpe.encode_ordinary
        self._known: dict[str, int] = {}

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))

    def count_words(self, words: list[str]) -> list[int]:
        """Each word's count, remembered (English repeats its words): see ``WordCounting``."""
        known = self._known
        new = set(filterfalse(known.__contains__, words))
        if new:
            if len(known) + len(new) > _KNOWN_WORDS:
                known.clear()
                new = set(words)
            known.update(zip(new, map(self._count_word, new), strict=True))
        return list(map(known.__getitem__, words))

    def _count_word(self, word: str) -> int:
        try:  # tiktoken's own call, less its wrapper (which only handles this error)
            return len(self._encode(word))
        except UnicodeEncodeError:  # a lone surrogate: tiktoken's wrapper replaces it
            return self.count(word)


def get_counter(name: str) -> TokenCounter:
    """The counter called ``name``: "tiktoken:<encoding>", "chars" (the estimate), or
    "auto" (tiktoken:o200k_base when its file is here, else the estimate)."""
    if name == "auto":
        try:
            return TiktokenCounter("o200k_base")
        except TokenizerFilesMissing:
            return ESTIMATE
    if name == "chars":
        return ESTIMATE
    if name.startswith("chars/"):
        try:
            ratio = float(name.removeprefix("chars/"))
        except ValueError:
            ratio = 0.0
        if ratio > 0:
            return CharEstimate(ratio)
    kind, _, encoding = name.partition(":")
    if kind == "tiktoken" and encoding in ENCODINGS:
        return TiktokenCounter(encoding)
    raise ValueError(
        f"unknown counter {name!r}: use 'auto', 'chars' or one of "
        + ", ".join(f"'tiktoken:{e}'" for e in ENCODINGS)
    )


def cache_key(encoding: str) -> str:
    """The file name tiktoken caches ``encoding``'s BPE file under."""
    return hashlib.sha1(_URL.format(encoding).encode()).hexdigest()


def expected_sha256(encoding: str) -> str:
    """The sha256 tiktoken checks ``encoding``'s file against, read from tiktoken itself."""
    from tiktoken_ext import openai_public

    source = inspect.getsource(openai_public)
    found = re.search(re.escape(_URL.format(encoding)) + r'",\s*expected_hash="(\w+)"', source)
    if found is None:
        raise RuntimeError(f"tiktoken {_tiktoken_version()} has no expected hash for {encoding}")
    return found.group(1)


def search_dirs() -> tuple[Path, ...]:
    """Where the BPE files are looked for, in order."""
    env = os.environ.get("TIKTOKEN_CACHE_DIR")
    return (Path(env), PROJECT_DIR) if env else (PROJECT_DIR,)


def find_file(encoding: str) -> Path:
    """The first file for ``encoding`` with the right sha256, or ``TokenizerFilesMissing``."""
    want = expected_sha256(encoding)
    for folder in search_dirs():
        path = folder / cache_key(encoding)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == want:
            return path
    raise TokenizerFilesMissing(encoding, search_dirs())


def _load(encoding: str, path: Path) -> Any:
    """tiktoken's own encoding, read from ``path``'s folder (the file is checked, so
    tiktoken finds it cached and never downloads)."""
    import tiktoken

    with _LOAD_LOCK, _env("TIKTOKEN_CACHE_DIR", str(path.parent)):
        return tiktoken.get_encoding(encoding)


@contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


def _tiktoken_version() -> str:
    import tiktoken

    return str(tiktoken.__version__)


# ── fetch: the one step that uses the network (PyPI, through pip) ─────────────────────


def fetch(dest: Path, *, version: str = LITELLM_VERSION) -> list[Path]:
    """Download the litellm wheel (no dependencies, not installed) and copy its tiktoken
    files for ``ENCODINGS`` into ``dest``, each checked against tiktoken's sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", f"litellm=={version}", "-d", tmp],
            check=True,
        )  # fmt: skip
        (wheel,) = Path(tmp).glob("litellm-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            return [_extract(zf, encoding, dest) for encoding in ENCODINGS]


def _extract(zf: zipfile.ZipFile, encoding: str, dest: Path) -> Path:
    data = zf.read(_WHEEL_DIR + cache_key(encoding))
    if hashlib.sha256(data).hexdigest() != expected_sha256(encoding):
        raise RuntimeError(f"{encoding} file in the litellm wheel has the wrong sha256")
    target = dest / cache_key(encoding)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] != "fetch":
        print("usage: python -m pipeline.tokens fetch [DEST]", file=sys.stderr)
        return 2
    dest = Path(argv[1]) if len(argv) == 2 else PROJECT_DIR
    for path in fetch(dest):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
