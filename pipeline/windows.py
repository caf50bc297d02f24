"""How one span is cut: the longest window from its start that the counter allows, ended
at the window's best break (``pipeline.breaks``).

    cut = cutter(counter, max_tokens=800)   # once per document
    span = cut(buf, start, must_pass)       # buf.text[start - buf.base : span.end - buf.base]

A cutter takes a ``Buffer`` (the part of the document in memory), a start on
non-whitespace, and an offset the span's end must pass; it gives the ``Span`` from there,
of at most ``max_tokens`` tokens. ``pipeline.chunking`` walks a document with it.

The window is found the quickest way the counter allows:

- a ``LengthCounting`` counter (``CharEstimate``) counts by length alone, so the window
  is as long as the limit allows, worked out once per call: no counting per span;
- a ``WordCounting`` counter (``pipeline.tokens.TiktokenCounter``) counts the document's
  words once each, as far as the current window reaches; the counts of whole words add
  up to the exact count of any prefix, so a span is a bisect over running sums, and only
  its partial first and last words are counted apart;
- any other counter: guess a window from the characters per token measured on the last
  one, count it, and grow or shrink it until it fits (so any counter's limit holds).

No window is longer than ``MAX_CHARS_PER_TOKEN`` characters per allowed token, so the
buffer need hold no more than that past a span's start.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from pipeline.breaks import best_break, trimmed
from pipeline.tokens import TokenCounter

__all__ = ["MAX_CHARS_PER_TOKEN", "Buffer", "Cut", "Span", "cutter"]

MAX_CHARS_PER_TOKEN = 64  # a window is at most this many characters per allowed token
_FIRST_CHARS_PER_TOKEN = 4.0
_GROW_STEPS = 3  # a window that fits with room grows at most this often ...
_GROW_FACTOR = 4  # ... by at most this factor each time (a counter that says 0 stays cheap)
# Words: cut before a space that follows a non-space, or a newline when the spaces it
# starts lead to a non-space (an indented line); tiktoken never joins across either.
_WORDS = re.compile(r"[\s\S][^ ]*(?:(?:(?<=[^\S\r\n]) +|(?<=[\r\n]) +(?![^\S\r\n]*\S))[^ ]*)*")
_FORGET_WORDS = 4096  # words indexed before a span's start that make it compact the index


@dataclass(frozen=True, slots=True)
class Span:
    """``text[start:end]`` is a chunk of ``tokens`` tokens (by the counter that cut it)."""

    start: int
    end: int
    tokens: int


class Buffer(Protocol):
    """The part of a document in memory: ``text`` holds its characters from offset
    ``base`` on, and ``eof`` says whether they reach the document's end."""

    text: str
    base: int
    eof: bool


Cut = Callable[[Buffer, int, int], Span]


def cutter(counter: TokenCounter, max_tokens: int) -> Cut:
    """How to cut the span at a start (non-whitespace) whose end should pass an offset:
    the quickest way ``counter`` allows."""
    count_length = getattr(counter, "count_length", None)
    if count_length is not None and (by_length := _by_length(count_length, max_tokens)):
        return by_length
    fitting = _Fitting(max_tokens, counter)
    count_words = getattr(counter, "count_words", None)
    if count_words is not None:
        return _ByWords(max_tokens, count_words, fitting).span
    return fitting.span


@functools.lru_cache(maxsize=64)
def _by_length(count_length: Callable[[int], int], max_tokens: int) -> Cut | None:
    """``_ByLength``'s cutter, made once per counter and limit (documents are often short)."""
    window = _longest(max_tokens, count_length)
    return _ByLength(window, count_length).span if window > 0 else None


def _longest(max_tokens: int, count_length: Callable[[int], int]) -> int:
    """The longest length, up to ``MAX_CHARS_PER_TOKEN`` per token, that counts at most
    ``max_tokens`` (0 when one character counts more)."""
    lo, hi = 0, max_tokens * MAX_CHARS_PER_TOKEN
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count_length(mid) <= max_tokens else (lo, mid - 1)
    return lo


class _ByLength:
    """Spans for a ``LengthCounting`` counter: every window is as long as the limit
    allows, so a span is a search for its best break and no counting."""

    def __init__(self, window: int, count_length: Callable[[int], int]) -> None:
        self.window, self.count_length = window, count_length

    def span(self, buf: Buffer, start: int, must_pass: int) -> Span:
        text, base = buf.text, buf.base
        local = start - base
        hi = min(len(text), local + self.window)
        cut = hi if hi == len(text) else best_break(text, local, hi, must_pass - base)
        end = trimmed(text, local, cut)
        return Span(start, end + base, self.count_length(end - local))


class _Fitting:
    """Spans for any counter: guess a window from the characters per token measured on
    the last one, count it, grow or shrink it until it fits, then cut at its best break.

    The window is at most ``MAX_CHARS_PER_TOKEN`` characters per token long, so the
    buffer need hold no more. The loop in ``span`` only repeats for a counter that can
    count a prefix higher than the whole window; each round looks below the last end, so
    it stops.
    """

    def __init__(self, max_tokens: int, counter: TokenCounter) -> None:
        self.max_tokens, self.counter, self.cpt = max_tokens, counter, _FIRST_CHARS_PER_TOKEN

    def span(self, buf: Buffer, start: int, must_pass: int) -> Span:
        text, base, max_tokens, counter = buf.text, buf.base, self.max_tokens, self.counter
        local, must = start - base, must_pass - base
        stop = min(len(text), local + max_tokens * MAX_CHARS_PER_TOKEN)
        hi, tokens = _fit(text, local, max_tokens, counter, self.cpt, stop)
        self.cpt = (hi - local) / max(tokens, 1)
        while True:
            cut = hi if hi == len(text) else best_break(text, local, hi, must)
            end = trimmed(text, local, cut)
            if end != hi:
                tokens = counter.count(text[local:end])
            if tokens <= max_tokens:
                return Span(start, end + base, tokens)
            hi, tokens = _shrink(text, local, end, tokens, max_tokens, counter)


class _ByWords:
    """Spans for a ``WordCounting`` counter, from the document's words counted once.

    ``ends`` and ``sums`` index the words from about the current span on: word ``i`` is
    ``text[ends[i]:ends[i + 1]]`` (document offsets) and ``sums[i]`` the tokens before
    it. A span is then two bisects (the last word that fits, the best break before it);
    only its partial first and last words are counted apart. The words are found as far
    as the span's window (``MAX_CHARS_PER_TOKEN`` characters per token) and no further,
    so a stream finds the same words as the whole string. When no whole word fits, or
    the window's words all fit short of the document's end, ``_Fitting`` cuts the span.
    """

    def __init__(
        self, max_tokens: int, count_words: Callable[[list[str]], list[int]], fitting: _Fitting
    ) -> None:
        self.max_tokens, self.count_words, self.fitting = max_tokens, count_words, fitting
        self.ends: list[int] = []
        self.sums: list[int] = []
        self.at_end = False  # the last word ends the document

    def span(self, buf: Buffer, start: int, must_pass: int) -> Span:
        found = self._span(buf, start, must_pass)
        return found if found is not None else self.fitting.span(buf, start, must_pass)

    def _span(self, buf: Buffer, start: int, must_pass: int) -> Span | None:
        text, base, max_tokens = buf.text, buf.base, self.max_tokens
        stop = min(base + len(text), start + max_tokens * MAX_CHARS_PER_TOKEN)
        i = self._word_at(start)
        ends, sums = self.ends, self.sums
        if ends[i] == start:
            zero = sums[i]  # tokens of text[start:ends[j]] are sums[j] - zero, j > i
        else:
            zero = sums[i + 1] - self.count_words([text[start - base : ends[i + 1] - base]])[0]
        while sums[-1] - zero <= max_tokens and self._find_words(buf, stop):
            pass
        fit = bisect.bisect_right(sums, zero + max_tokens, i + 1) - 1
        if fit <= i or (fit == len(ends) - 1 and not self.at_end):
            return None
        limit, local = ends[fit] - base, start - base
        ends_text = self.at_end and fit == len(ends) - 1
        cut = limit if ends_text else best_break(text, local, limit, must_pass - base)
        end = trimmed(text, local, cut)
        whole = bisect.bisect_right(ends, end + base, i) - 1  # words wholly in the span
        head, tokens = (ends[whole] - base, sums[whole] - zero) if whole > i else (local, 0)
        if head < end:
            tokens += self.count_words([text[head:end]])[0]
        if tokens > max_tokens:
            return None
        self.fitting.cpt = (limit - local) / max(sums[fit] - zero, 1)
        return Span(start, end + base, tokens)

    def _word_at(self, start: int) -> int:
        """The index of the word holding ``start``; words before it are forgotten."""
        ends, sums = self.ends, self.sums
        if not ends or not ends[0] <= start < ends[-1]:
            ends[:], sums[:], self.at_end = [start], [0], False
            return 0
        i = bisect.bisect_right(ends, start) - 1
        if i > _FORGET_WORDS:
            del ends[:i], sums[:i]
            return 0
        return i

    def _find_words(self, buf: Buffer, stop: int) -> bool:
        """Index the words after the last one up to ``stop``; whether any were found."""
        text, base = buf.text, buf.base
        at = self.ends[-1]
        if self.at_end or at >= stop:
            return False
        words = _WORDS.findall(text, at - base, stop - base)
        self.at_end = stop - base == len(text) and buf.eof
        if not self.at_end:
            words.pop()  # the last word may go on past ``stop``
        if not words:
            return False
        lengths, counts = list(map(len, words)), self.count_words(words)
        lengths[0] += at
        counts[0] += self.sums[-1]
        self.ends += accumulate(lengths)
        self.sums += accumulate(counts)
        return True


def _fit(
    text: str, start: int, max_tokens: int, counter: TokenCounter, cpt: float, stop: int
) -> tuple[int, int]:
    """A window end ``hi <= stop`` with ``count(text[start:hi]) <= max_tokens``, and that
    count."""
    hi = min(stop, start + max(1, int(max_tokens * cpt)))
    tokens = counter.count(text[start:hi])
    for _ in range(_GROW_STEPS):
        if tokens > max_tokens or hi == stop:
            break
        length = hi - start
        target = min(
            stop, start + int(max_tokens * length / max(tokens, 1)), start + length * _GROW_FACTOR
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
