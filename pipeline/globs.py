"""Path globs, as used by ``corpus.include`` / ``corpus.exclude`` and residency rules.

    glob_match("eu/**", "eu/x/y.md")        # True
    glob_match("**/*.md", "a.md")           # True: ``**/`` may match no folder at all
    glob_match("*.md", "notes/a.md")        # False: ``*`` never crosses "/"
    compile_glob("docs/[!_]*.txt").fullmatch("docs/a.txt")

Patterns are matched against POSIX paths relative to the corpus root, whole path only,
case-sensitively:

- ``*`` matches any run of characters inside one segment (possibly none), ``?`` exactly
  one character; neither ever matches ``/``;
- ``**`` must be a whole segment and matches zero or more whole segments, so ``eu/**``
  matches ``eu/a.txt`` and ``eu/x/y.md`` (and a file named ``eu``), and ``a/**/b`` matches
  ``a/b`` and ``a/x/y/b``;
- ``[abc]``, ``[a-z]`` and ``[!abc]`` (or ``[^abc]``) match one character of a class (never
  ``/``); a ``]`` right after the opening ``[`` or ``[!`` is literal;
- every other character is literal.

A pattern that cannot mean anything (empty, absolute, ``.``/``..`` or empty segments,
``**`` glued to other characters, an unclosed ``[``) is a ``ValueError`` that names it.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["compile_glob", "glob_match"]

_ONE_SEGMENT_CHAR = "[^/]"


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The anchored regex for ``pattern``; ``match``, ``fullmatch`` and ``search`` agree.

    >>> bool(compile_glob("eu/**").match("eu/x/y.md"))
    True
    """
    segments = _segments(pattern)
    regex = _join(pattern, segments)
    try:
        return re.compile(rf"\A(?:{regex})\Z", re.DOTALL)
    except re.error as exc:  # e.g. a reversed range in a class, "[z-a]"
        raise ValueError(f"invalid glob {pattern!r}: {exc}") from exc


def glob_match(pattern: str, path: str) -> bool:
    """Whether the relative POSIX ``path`` matches ``pattern`` as a whole.

    >>> glob_match("**/*.md", "x/a.md"), glob_match("eu/*", "eu/x/a.md")
    (True, False)
    """
    return compile_glob(pattern).match(path) is not None


def _segments(pattern: str) -> list[str]:
    """``pattern`` split on "/", checked, with runs of ``**`` folded into one."""
    if not pattern:
        raise ValueError("invalid glob '': a pattern cannot be empty")
    if pattern.startswith("/"):
        raise ValueError(f"invalid glob {pattern!r}: patterns are relative to the corpus root")
    segments: list[str] = []
    for segment in pattern.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(
                f"invalid glob {pattern!r}: empty, '.' or '..' segment "
                "(write paths like 'eu/**', relative to the corpus root)"
            )
        if "**" in segment and segment != "**":
            raise ValueError(
                f"invalid glob {pattern!r}: '**' must be a whole segment "
                "(write '**/*.md', not '**.md')"
            )
        if segment == "**" and segments and segments[-1] == "**":
            continue
        segments.append(segment)
    return segments


def _join(pattern: str, segments: list[str]) -> str:
    """The regex body: segments joined by "/", with ``**`` absorbing its own separator."""
    if segments == ["**"]:
        return ".*"
    last = len(segments) - 1
    out: list[str] = []
    for i, segment in enumerate(segments):
        if segment != "**":
            if i > 0 and segments[i - 1] != "**":
                out.append("/")
            out.append(_segment_regex(pattern, segment))
        elif i == 0:
            out.append("(?:.*/)?")  # "**/b": b, x/b, x/y/b
        elif i == last:
            out.append("(?:/.*)?")  # "a/**": a, a/x, a/x/y
        else:
            out.append("/(?:.*/)?")  # "a/**/b": a/b, a/x/b
    return "".join(out)


def _segment_regex(pattern: str, segment: str) -> str:
    """The regex for one segment without ``/``: wildcards, classes, literals."""
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append(_ONE_SEGMENT_CHAR + "*")
        elif char == "?":
            out.append(_ONE_SEGMENT_CHAR)
        elif char == "[":
            regex, i = _class_regex(pattern, segment, i)
            out.append(regex)
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _class_regex(pattern: str, segment: str, open_at: int) -> tuple[str, int]:
    """The regex for the class opening at ``segment[open_at]``, and the index after it."""
    i = open_at + 1
    negate = i < len(segment) and segment[i] in "!^"
    if negate:
        i += 1
    close = segment.find("]", i + 1)  # a "]" first in the class is literal
    if close == -1:
        raise ValueError(f"invalid glob {pattern!r}: '[' at {segment!r} is never closed")
    body = _class_body(pattern, segment[i:close])
    if negate:
        return f"[^/{body}]", close + 1
    return f"(?!/)[{body}]", close + 1  # a range such as ".-0" must not let "/" through


def _class_body(pattern: str, members: str) -> str:
    """Class members with ranges kept and every other character escaped."""
    out: list[str] = []
    i = 0
    while i < len(members):
        if i + 2 < len(members) and members[i + 1] == "-":
            low, high = members[i], members[i + 2]
            if low > high:
                raise ValueError(f"invalid glob {pattern!r}: range '{low}-{high}' is reversed")
            out.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
        else:
            out.append(re.escape(members[i]))
            i += 1
    return "".join(out)
