"""Where a chunk may end: the best break in a window, by preference.

    end = best_break(text, start, hi, must_pass)   # paragraph > line > sentence > space
    end = trimmed(text, start, end)                # without the trailing whitespace

A paragraph break is a blank line, or the line before a markdown heading, but never the
end of a heading's own line (a heading stays with its section). Every search runs from
the window's end backwards, with regexes whose leading ``.*`` jumps to the end, so a
span costs about its last line, not its length.
"""

from __future__ import annotations

import re

__all__ = ["HEADING_MAX_CHARS", "best_break", "ends_a_heading", "trimmed"]

_PARAGRAPH = re.compile(r"\n(?:[^\S\n]*\n|(?=#{1,6}[ \t]))")  # blank line, or a heading's line
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
# The last match in text[pos:endpos]: ``.*`` jumps to the end and backs off from there
# (quickest when what follows starts with a literal character).
_LAST_PARAGRAPH = re.compile(rf"(?s:.*){_PARAGRAPH.pattern}")
_LAST_SENTENCE_END = re.compile(rf"(?s:.*){_SENTENCE_END.pattern}")
_LAST_SPACE = re.compile(r"(?s:.*)\s")
_LAST_NON_SPACE = re.compile(r"(?s:.*)\S")
_HEADING = re.compile(r" {0,3}#{1,6}[ \t]")
HEADING_MAX_CHARS = 300


def best_break(text: str, start: int, hi: int, must_pass: int) -> int:
    """Where to end the span in ``text[start:hi]``, before trailing whitespace is trimmed
    (any place in the chosen blank run: the span ends where the run starts).

    Looks in the window's second half (and past ``must_pass``) for the most preferred kind
    of break; ``text[hi]`` counts too, so a window ending just before a space ends there.
    """
    stop = min(len(text), hi + 1)
    lo = max(start + (hi - start) // 2, must_pass + 1)
    cut = _last_paragraph(text, lo, stop)
    if cut <= start:
        cut = text.rfind("\n", lo, stop)
    if cut <= start:
        cut = _last_sentence_end(text, lo, stop)
    if cut <= start:
        cut = _last_space(text, lo, stop)
    if cut <= start:
        cut = _last_space(text, max(start, must_pass) + 1, lo)  # a short span beats a cut word
    return cut if cut > start else hi


def _last_paragraph(text: str, lo: int, stop: int) -> int:
    """A place in the last blank run of ``text[lo:stop]`` that holds a match of
    ``_PARAGRAPH.finditer(text, lo, stop)`` not ending a heading (-1 if none does).

    Searched from the end, one blank run at a time: a match is all whitespace, so the
    matches in a run are those ``finditer`` finds from the run's start, and only the
    first of them can end a heading's line.
    """
    before = stop
    while (hit := _LAST_PARAGRAPH.match(text, lo, min(stop, before + 1))) is not None:
        found = _LAST_NON_SPACE.match(text, lo, hit.end() - 1)
        run = found.end() if found else lo  # where the blank run holding the match starts
        if not ends_a_heading(text, run):
            return hit.end() - 1
        # no match in the run goes past this one, nor looks further on than "######\t"
        matches = _PARAGRAPH.finditer(text, run, min(stop, before + 1, hit.end() + 7))
        if sum(1 for _ in matches) > 1:  # a heading stays with its section
            return hit.end() - 1
        before = run
    return -1


def trimmed(text: str, start: int, cut: int) -> int:
    """Where ``text[start:cut]`` ends once its trailing whitespace is cut off."""
    found = _LAST_NON_SPACE.match(text, start, cut)
    return found.end() if found else start


def ends_a_heading(text: str, at: int) -> bool:
    """Whether the line that ends at ``at`` is a markdown heading ("## Risks")."""
    line = text.rfind("\n", max(0, at - HEADING_MAX_CHARS), at) + 1
    if line == 0 and at > HEADING_MAX_CHARS:
        return False  # no line start close enough: too long for a heading
    return _HEADING.match(text, line) is not None


def _last_sentence_end(text: str, lo: int, stop: int) -> int:
    """The end of the last ``_SENTENCE_END`` in ``text[lo:stop]`` (a match ends at the
    first whitespace after its start, so the last start gives the last end)."""
    found = _LAST_SENTENCE_END.match(text, lo, stop)
    return found.end() if found else -1


def _last_space(text: str, lo: int, stop: int) -> int:
    """The last whitespace in ``text[lo:stop]``, or -1."""
    found = _LAST_SPACE.match(text, lo, stop)
    return found.end() - 1 if found else -1
