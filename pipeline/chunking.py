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

How one span is cut: find the longest window from its start that the counter allows,
then end the span at the best break in the window's second half, in this order of
preference:

1. a blank line, or the line before a markdown heading (but never the blank line right
   after a heading: a heading stays with its section);
2. a newline;
3. a sentence end (. ! ? and closing quotes or brackets, then whitespace);
4. whitespace;

and only when the window has no whitespace at all, cut it hard. Breaks in the first half
are passed over so spans stay near the limit instead of a line or two long. The breaks
are searched from the window's end backwards, so a span costs about the length of its
last line, not of its window.

The window is found the quickest way the counter allows:

- a ``LengthCounting`` counter (``CharEstimate``) counts by length alone, so the window
  is as long as the limit allows, worked out once per call: no counting per span;
- a ``WordCounting`` counter (``pipeline.tokens.TiktokenCounter``) counts the document's
  words once each, as far as the current window reaches; the counts of whole words add
  up to the exact count of any prefix, so a span is a bisect over running sums, and only
  its partial first and last words are counted apart;
- any other counter: guess a window from the characters per token measured on the last
  one, count it, and grow or shrink it until it fits (so any counter's limit holds).

No window is longer than ``_MAX_CHARS_PER_TOKEN`` characters per allowed token, which is
what lets ``split_spans_stream`` hold only a window of a long document and still give the
spans ``split_spans`` gives for the whole string.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from pipeline.breaks import HEADING_MAX_CHARS, best_break, trimmed
from pipeline.models import Chunk, Document, stable_id

__all__ = [
    "CharEstimate",
    "LengthCounting",
    "Span",
    "TokenCounter",
    "WordCounting",
    "chunk_document",
    "chunk_stream",
    "split_spans",
    "split_spans_stream",
]


class TokenCounter(Protocol):
    """Counts tokens the way some model does; ``name`` goes into reports."""

    name: str

    def count(self, text: str) -> int: ...


class WordCounting(TokenCounter, Protocol):
    """A counter whose counts add up over words: cut a text that ends in a non-space
    where ``_WORDS`` cuts it (before a space that follows a non-space, or that starts an
    indented line), and ``count(text)`` is the sum of ``count_words(parts)``. tiktoken's
    encodings are so: their pre-tokenizers never join across those places. The chunker
    then counts each window once instead of once per candidate end.
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


@dataclass(frozen=True, slots=True)
class Span:
    """``text[start:end]`` is a chunk of ``tokens`` tokens (by the counter that cut it)."""

    start: int
    end: int
    tokens: int


_NON_SPACE = re.compile(r"\S")
_WORD_START = re.compile(r"(?<=\s)\S")
# Words: cut before a space that follows a non-space, or a newline when the spaces it
# starts lead to a non-space (an indented line); tiktoken never joins across either.
_WORDS = re.compile(r"[\s\S][^ ]*(?:(?:(?<=[^\S\r\n]) +|(?<=[\r\n]) +(?![^\S\r\n]*\S))[^ ]*)*")
_FORGET_WORDS = 4096  # words indexed before a span's start that make it compact the index

_FIRST_CHARS_PER_TOKEN = 4.0
_MAX_CHARS_PER_TOKEN = 64  # a window is at most this many characters per allowed token
_LOOKBACK = HEADING_MAX_CHARS + 1  # kept before a span's start (the heading check)
_READ_AHEAD = 1 << 16  # a stream is read in at least this many characters at a time
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
    return _spans(_Buffer.whole(text), max_tokens, overlap_tokens, counter)


def split_spans_stream(
    blocks: Iterable[str], *, max_tokens: int, overlap_tokens: int, counter: TokenCounter
) -> Iterator[tuple[Span, str]]:
    """``split_spans`` of the text ``"".join(blocks)``, read as needed: the same spans
    (offsets in the whole text), each with its chunk's text, in memory that does not
    grow with the document (about a window plus the blocks read ahead).

        with open(path, encoding="utf-8") as f:
            for span, chunk in split_spans_stream(iter(lambda: f.read(1 << 20), ""), ...):
                ...

    >>> [(s.start, c) for s, c in split_spans_stream(["On", "e. Two."], max_tokens=2,
    ...                                              overlap_tokens=0, counter=CharEstimate())]
    [(0, 'One.'), (5, 'Two.')]
    """
    _check_limits(max_tokens, overlap_tokens)
    buf = _Buffer(blocks)
    for span in _spans(buf, max_tokens, overlap_tokens, counter):
        yield span, buf.text[span.start - buf.base : span.end - buf.base]


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
    pairs = ((span, text[span.start : span.end]) for span in spans)
    return _chunks(doc, pairs, tuple(regions), residency_rule, tuple(page_starts))


def chunk_stream(
    doc: Document,
    blocks: Iterable[str],
    *,
    max_tokens: int,
    overlap_tokens: int,
    counter: TokenCounter,
    regions: tuple[str, ...],
    residency_rule: str,
) -> Iterator[Chunk]:
    """``chunk_document`` of ``"".join(blocks)``, in memory that does not grow with it.

    Same chunks, same ids and offsets as the whole-string call, for documents too large
    to hold (see ``pipeline.ingest.stream``).
    """
    pairs = split_spans_stream(
        blocks, max_tokens=max_tokens, overlap_tokens=overlap_tokens, counter=counter
    )
    return _chunks(doc, pairs, tuple(regions), residency_rule, ())


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
    pairs: Iterable[tuple[Span, str]],
    regions: tuple[str, ...],
    rule: str,
    page_starts: tuple[int, ...] = (),
) -> Iterator[Chunk]:
    for index, (span, chunk_text) in enumerate(pairs):
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


class _Buffer:
    """The part of a document being cut, read from ``blocks`` as needed.

    ``text`` holds the document's characters from offset ``base`` on; ``ensure`` reads on
    (forgetting what lies before ``keep``) until the text reaches an offset or the end.
    """

    def __init__(self, blocks: Iterable[str]) -> None:
        self.blocks, self.text, self.base, self.eof = iter(blocks), "", 0, False

    @classmethod
    def whole(cls, text: str) -> _Buffer:
        """A buffer that holds all of ``text`` already."""
        buf = cls(())
        buf.text, buf.eof = text, True
        return buf

    def ensure(self, reach: int, keep: int) -> None:
        if self.eof or self.base + len(self.text) >= reach:
            return
        got, size = [], self.base + len(self.text)
        for block in self.blocks:
            got.append(block)
            size += len(block)
            if size >= reach + _READ_AHEAD:
                break
        else:
            self.eof = True
        drop = min(max(keep, self.base), self.base + len(self.text)) - self.base
        self.text = self.text[drop:] + "".join(got)
        self.base += drop

    def non_space(self, at: int, keep: int) -> int | None:
        """Offset of the first non-whitespace character at or after ``at``, if any."""
        while True:
            found = _NON_SPACE.search(self.text, max(at - self.base, 0))
            if found is not None:
                return self.base + found.start()
            if self.eof:
                return None
            at = self.base + len(self.text)
            self.ensure(at + _READ_AHEAD, min(keep, at - _LOOKBACK))


def _spans(
    buf: _Buffer, max_tokens: int, overlap_tokens: int, counter: TokenCounter
) -> Iterator[Span]:
    """The engine; every offset here is the document's, ``buf`` maps them to its text."""
    cut = _cutter(counter, max_tokens)
    if not buf.eof:
        buf.ensure(_READ_AHEAD, 0)
    start = buf.non_space(0, 0)
    if start is None:
        return
    prev_end, following = 0, start
    reach = max_tokens * _MAX_CHARS_PER_TOKEN + 2  # no window is longer, see _Fitting
    while True:
        if not buf.eof:
            buf.ensure(start + reach, start - _LOOKBACK)
        span = cut(buf, start, prev_end)
        if span.end <= prev_end:  # inside the previous span: drop the overlap this once
            buf.ensure(following + reach, following - _LOOKBACK)
            span = cut(buf, following, prev_end)
        yield span
        keep = span.start if overlap_tokens else span.end  # a long blank run is kept only here
        after = buf.non_space(span.end, keep - _LOOKBACK)
        if after is None:
            return
        shared = _overlap_start(buf, span, overlap_tokens) if overlap_tokens else None
        following, prev_end = after, span.end
        start = following if shared is None else shared


_Cut = Callable[[_Buffer, int, int], Span]


def _cutter(counter: TokenCounter, max_tokens: int) -> _Cut:
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
def _by_length(count_length: Callable[[int], int], max_tokens: int) -> _Cut | None:
    """``_ByLength``'s cutter, made once per counter and limit (documents are often short)."""
    window = _longest(max_tokens, count_length)
    return _ByLength(window, count_length).span if window > 0 else None


def _longest(max_tokens: int, count_length: Callable[[int], int]) -> int:
    """The longest length, up to ``_MAX_CHARS_PER_TOKEN`` per token, that counts at most
    ``max_tokens`` (0 when one character counts more)."""
    lo, hi = 0, max_tokens * _MAX_CHARS_PER_TOKEN
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count_length(mid) <= max_tokens else (lo, mid - 1)
    return lo


class _ByLength:
    """Spans for a ``LengthCounting`` counter: every window is as long as the limit
    allows, so a span is a search for its best break and no counting."""

    def __init__(self, window: int, count_length: Callable[[int], int]) -> None:
        self.window, self.count_length = window, count_length

    def span(self, buf: _Buffer, start: int, must_pass: int) -> Span:
        text, base = buf.text, buf.base
        local = start - base
        hi = min(len(text), local + self.window)
        cut = hi if hi == len(text) else best_break(text, local, hi, must_pass - base)
        end = trimmed(text, local, cut)
        return Span(start, end + base, self.count_length(end - local))


class _Fitting:
    """Spans for any counter: guess a window from the characters per token measured on
    the last one, count it, grow or shrink it until it fits, then cut at its best break.

    The window is at most ``_MAX_CHARS_PER_TOKEN`` characters per token long, so the
    buffer need hold no more. The loop in ``span`` only repeats for a counter that can
    count a prefix higher than the whole window; each round looks below the last end, so
    it stops.
    """

    def __init__(self, max_tokens: int, counter: TokenCounter) -> None:
        self.max_tokens, self.counter, self.cpt = max_tokens, counter, _FIRST_CHARS_PER_TOKEN

    def span(self, buf: _Buffer, start: int, must_pass: int) -> Span:
        text, base, max_tokens, counter = buf.text, buf.base, self.max_tokens, self.counter
        local, must = start - base, must_pass - base
        stop = min(len(text), local + max_tokens * _MAX_CHARS_PER_TOKEN)
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
    as the span's window (``_MAX_CHARS_PER_TOKEN`` characters per token) and no further,
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

    def span(self, buf: _Buffer, start: int, must_pass: int) -> Span:
        found = self._span(buf, start, must_pass)
        return found if found is not None else self.fitting.span(buf, start, must_pass)

    def _span(self, buf: _Buffer, start: int, must_pass: int) -> Span | None:
        text, base, max_tokens = buf.text, buf.base, self.max_tokens
        stop = min(base + len(text), start + max_tokens * _MAX_CHARS_PER_TOKEN)
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

    def _find_words(self, buf: _Buffer, stop: int) -> bool:
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


def _overlap_start(buf: _Buffer, span: Span, overlap_tokens: int) -> int | None:
    """Where the next span starts: about ``overlap_tokens`` back from ``span.end``, at a
    word's first character when one begins there, and at least a quarter span onward.

    ``None`` when the span is too short to share anything (the next span starts at the
    first non-whitespace after it).
    """
    length = span.end - span.start
    chars = math.ceil(overlap_tokens * length / max(span.tokens, 1))
    start = max(span.end - chars, span.start + max(1, length // 4))
    if start >= span.end:
        return None
    word = _WORD_START.search(buf.text, start - buf.base, span.end - buf.base)
    return buf.base + word.start() if word else start
