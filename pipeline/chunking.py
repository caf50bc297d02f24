"""Token-bounded, offset-preserving, streaming chunker.

    counter = CharEstimate()
    for span in split_spans(text, max_tokens=800, overlap_tokens=64, counter=counter):
        text[span.start:span.end]   # the chunk; counter.count(it) == span.tokens <= 800

    chunks = chunk_document(doc, text, max_tokens=800, overlap_tokens=64, counter=counter,
                            regions=("eu",), residency_rule="eu/**")

What it promises, for any ``TokenCounter``:

- every span's text is ``text[start:end]`` by construction (repeated passages keep their
  own offsets) and ``counter.count`` of it is ``span.tokens <= max_tokens``;
- spans start and end on non-whitespace, starts and ends both strictly increase, and
  together they cover every non-whitespace character; whitespace-only text has no span;
- consecutive spans share about ``overlap_tokens`` of text (never more than 3/4 of the
  earlier span, so the walk keeps moving), starting at a word when there is one;
- time is linear in ``len(text)``: each span looks only at its own window.

How one span is cut: guess a window of ``max_tokens`` worth of characters from the
characters-per-token measured on the last window, count it, grow or shrink it until it
fits (so any counter's limit holds, not only the estimate's), then end the span at the
best break in the window's second half, in this order of preference:

1. a blank line, or the line before a markdown heading (but never the blank line right
   after a heading: a heading stays with its section);
2. a newline;
3. a sentence end (. ! ? and closing quotes or brackets, then whitespace);
4. whitespace;

and only when the window has no whitespace at all, cut it hard. Breaks in the first half
are passed over so spans stay near the limit instead of a line or two long.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.models import Chunk, Document, stable_id

__all__ = ["CharEstimate", "Span", "TokenCounter", "chunk_document", "split_spans"]


class TokenCounter(Protocol):
    """Counts tokens the way some model does; ``name`` goes into reports."""

    name: str

    def count(self, text: str) -> int: ...


class CharEstimate:
    """Offline estimate: one token per 4 characters, rounded up.

    >>> CharEstimate().count("hello"), CharEstimate.name
    (2, 'chars/4')
    """

    name: str = "chars/4"

    def count(self, text: str) -> int:
        return (len(text) + 3) // 4


@dataclass(frozen=True, slots=True)
class Span:
    """``text[start:end]`` is a chunk of ``tokens`` tokens (by the counter that cut it)."""

    start: int
    end: int
    tokens: int


_NON_SPACE = re.compile(r"\S")
_WORD_START = re.compile(r"(?<=\s)\S")
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n|\n(?=#{1,6}[ \t])")  # blank line, or a heading's line
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
_SPACE = re.compile(r"\s+")
_HEADING = re.compile(r" {0,3}#{1,6}[ \t]")
_HEADING_MAX_CHARS = 300

_FIRST_CHARS_PER_TOKEN = 4.0
_GROW_STEPS = 3  # a window that fits with room grows at most this often ...
_GROW_FACTOR = 4  # ... by at most this factor each time (a counter that says 0 stays cheap)


def split_spans(
    text: str, *, max_tokens: int, overlap_tokens: int, counter: TokenCounter
) -> Iterator[Span]:
    """Stream the spans of ``text`` (see the module docstring for what they promise).

    Arguments are checked here, at the call: ``ValueError`` names the bad one.

    >>> [(s.start, s.end) for s in split_spans("One. Two.", max_tokens=2,
    ...                                        overlap_tokens=0, counter=CharEstimate())]
    [(0, 4), (5, 9)]
    """
    _check_limits(max_tokens, overlap_tokens)
    return _spans(text, max_tokens, overlap_tokens, counter)


def chunk_document(
    doc: Document,
    text: str,
    *,
    max_tokens: int,
    overlap_tokens: int,
    counter: TokenCounter,
    regions: tuple[str, ...],
    residency_rule: str,
    page_starts: Sequence[int] = (),
) -> Iterator[Chunk]:
    """Stream ``doc``'s chunks, numbered from 0, each with a stable content id.

    With ``page_starts`` (where each page begins in ``text``), each chunk knows its pages.

    ``chunk_id`` is ``stable_id(doc.doc_id, char_start, chunk_text)``: the same for the
    same text at the same place, run after run, and distinct for a passage repeated in
    one document.
    """
    spans = split_spans(text, max_tokens=max_tokens, overlap_tokens=overlap_tokens, counter=counter)
    return _chunks(doc, text, spans, tuple(regions), residency_rule, tuple(page_starts))


def pages_of(start: int, end: int, page_starts: Sequence[int]) -> tuple[int, ...]:
    """1-based numbers of the pages that ``text[start:end]`` touches.

    >>> pages_of(5, 25, [0, 10, 20, 30])
    (1, 2, 3)
    """
    if not page_starts:
        return ()
    first = bisect.bisect_right(page_starts, start)
    last = bisect.bisect_right(page_starts, max(end - 1, start))
    return tuple(range(max(first, 1), max(last, 1) + 1))


def _chunks(
    doc: Document,
    text: str,
    spans: Iterator[Span],
    regions: tuple[str, ...],
    rule: str,
    page_starts: tuple[int, ...] = (),
) -> Iterator[Chunk]:
    for index, span in enumerate(spans):
        chunk_text = text[span.start : span.end]
        yield Chunk(
            chunk_id=stable_id(doc.doc_id, span.start, chunk_text),
            doc_id=doc.doc_id,
            path=doc.path,
            index=index,
            char_start=span.start,
            char_end=span.end,
            token_estimate=span.tokens,
            text=chunk_text,
            regions=regions,
            residency_rule=rule,
            pages=pages_of(span.start, span.end, page_starts),
        )


def _check_limits(max_tokens: int, overlap_tokens: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if (
        isinstance(overlap_tokens, bool)
        or not isinstance(overlap_tokens, int)
        or not 0 <= overlap_tokens < max_tokens
    ):
        raise ValueError(
            f"overlap_tokens must be an integer with 0 <= overlap_tokens < max_tokens "
            f"({max_tokens}), got {overlap_tokens!r}"
        )


def _spans(
    text: str, max_tokens: int, overlap_tokens: int, counter: TokenCounter
) -> Iterator[Span]:
    first = _NON_SPACE.search(text)
    if first is None:
        return
    start, prev_end, cpt = first.start(), 0, _FIRST_CHARS_PER_TOKEN
    following = start
    while True:
        span, cpt = _next_span(text, start, prev_end, max_tokens, counter, cpt)
        if span.end <= prev_end:  # inside the previous span: drop the overlap this once
            span, cpt = _next_span(text, following, prev_end, max_tokens, counter, cpt)
        yield span
        after = _NON_SPACE.search(text, span.end)
        if after is None:
            return
        following, prev_end = after.start(), span.end
        start = (
            _overlap_start(text, span, overlap_tokens, following) if overlap_tokens else following
        )


def _next_span(
    text: str, start: int, must_pass: int, max_tokens: int, counter: TokenCounter, cpt: float
) -> tuple[Span, float]:
    """The span starting at ``start`` (non-whitespace), and the chars-per-token measured.

    Its end should lie beyond ``must_pass`` (the previous span's end) when the window
    allows. The loop only repeats for a counter that can count a prefix higher than the
    whole window; each round looks below the last end, so it stops.
    """
    hi, tokens = _fit(text, start, max_tokens, counter, cpt)
    cpt = (hi - start) / max(tokens, 1)
    while True:
        cut = hi if hi == len(text) else _best_break(text, start, hi, must_pass)
        end = start + len(text[start:cut].rstrip())
        if end != hi:
            tokens = counter.count(text[start:end])
        if tokens <= max_tokens:
            return Span(start, end, tokens), cpt
        hi, tokens = _shrink(text, start, end, tokens, max_tokens, counter)


def _fit(
    text: str, start: int, max_tokens: int, counter: TokenCounter, cpt: float
) -> tuple[int, int]:
    """A window end ``hi`` with ``count(text[start:hi]) <= max_tokens``, and that count."""
    n = len(text)
    hi = min(n, start + max(1, int(max_tokens * cpt)))
    tokens = counter.count(text[start:hi])
    for _ in range(_GROW_STEPS):
        if tokens > max_tokens or hi == n:
            break
        length = hi - start
        target = min(
            n, start + int(max_tokens * length / max(tokens, 1)), start + length * _GROW_FACTOR
        )
        if target <= hi:
            break
        hi, tokens = target, counter.count(text[start:target])
    if tokens > max_tokens:
        hi, tokens = _shrink(text, start, hi, tokens, max_tokens, counter)
    return hi, tokens


def _shrink(
    text: str, start: int, hi: int, tokens: int, max_tokens: int, counter: TokenCounter
) -> tuple[int, int]:
    """Shorten ``text[start:hi]`` in proportion until its count is within ``max_tokens``."""
    while tokens > max_tokens:
        length = hi - start
        if length <= 1:
            raise ValueError(
                f"max_tokens={max_tokens} is too small for counter {counter.name!r}: "
                f"the character {text[start]!r} at offset {start} alone counts {tokens}"
            )
        hi = start + max(1, min(length - 1, length * max_tokens // tokens))
        tokens = counter.count(text[start:hi])
    return hi, tokens


def _best_break(text: str, start: int, hi: int, must_pass: int) -> int:
    """Where to end the span in ``text[start:hi]``, before trailing whitespace is trimmed.

    Looks in the window's second half (and past ``must_pass``) for the most preferred kind
    of break; ``text[hi]`` counts too, so a window ending just before a space ends there.
    """
    stop = min(len(text), hi + 1)
    lo = max(start + (hi - start) // 2, must_pass + 1)
    for find in (_last_paragraph, _last_newline, _last_sentence_end, _last_space):
        cut = find(text, lo, stop)
        if cut > start:
            return cut
    cut = _last_space(text, max(start, must_pass) + 1, lo)  # a short span beats a cut word
    return cut if cut > start else hi


def _last_paragraph(text: str, lo: int, stop: int) -> int:
    last = -1
    for m in _PARAGRAPH.finditer(text, lo, stop):
        if not _ends_a_heading(text, m.start()):  # a heading stays with its section
            last = m.start()
    return last


def _ends_a_heading(text: str, at: int) -> bool:
    """Whether the line that ends at ``at`` is a markdown heading ("## Risks")."""
    line = text.rfind("\n", max(0, at - _HEADING_MAX_CHARS), at) + 1
    if line == 0 and at > _HEADING_MAX_CHARS:
        return False  # no line start close enough: too long for a heading
    return _HEADING.match(text, line) is not None


def _last_newline(text: str, lo: int, stop: int) -> int:
    return text.rfind("\n", lo, stop)


def _last_sentence_end(text: str, lo: int, stop: int) -> int:
    last = -1
    for m in _SENTENCE_END.finditer(text, lo, stop):
        last = m.end()
    return last


def _last_space(text: str, lo: int, stop: int) -> int:
    last = -1
    for m in _SPACE.finditer(text, lo, stop):
        last = m.start()
    return last


def _overlap_start(text: str, span: Span, overlap_tokens: int, following: int) -> int:
    """Where the next span starts: about ``overlap_tokens`` back from ``span.end``, at a
    word's first character when one begins there, and at least a quarter span onward.

    ``following`` (the first non-whitespace after the span) is the answer when the span
    is too short to share anything.
    """
    length = span.end - span.start
    chars = math.ceil(overlap_tokens * length / max(span.tokens, 1))
    start = max(span.end - chars, span.start + max(1, length // 4))
    if start >= span.end:
        return following
    word = _WORD_START.search(text, start, span.end)
    return word.start() if word else start
