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

A ``WordCounting`` counter (``pipeline.tokens.TiktokenCounter``) is asked once per span,
word by word over a window a quarter longer than the guess; the counts of whole words add
up to the exact count of any prefix, so the limit and the best break come out of one
pass, and only a span's last partial word is counted again. No window is longer than
``_MAX_CHARS_PER_TOKEN`` characters per allowed token, which is what lets
``split_spans_stream`` hold only a window of a long document and still give the spans
``split_spans`` gives for the whole string.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from pipeline.models import Chunk, Document, stable_id

__all__ = [
    "CharEstimate",
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
        return math.ceil(len(text) / self.chars_per_token)


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

# Words: cut before a space that follows a non-space, or a newline when the spaces it
# starts lead to a non-space (an indented line); tiktoken never joins across either.
_WORDS = re.compile(r"[\s\S][^ ]*(?:(?:(?<=[^\S\r\n]) +|(?<=[\r\n]) +(?![^\S\r\n]*\S))[^ ]*)*")
_WORD_WINDOW = 1.25  # the word path counts this much more than a span's guessed length

_FIRST_CHARS_PER_TOKEN = 4.0
_MAX_CHARS_PER_TOKEN = 64  # a window is at most this many characters per allowed token
_LOOKBACK = _HEADING_MAX_CHARS + 1  # kept before a span's start (the heading check)
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
    return _spans(_Buffer((text,)), max_tokens, overlap_tokens, counter)


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
    buf.ensure(_READ_AHEAD, 0)
    start = buf.non_space(0, 0)
    if start is None:
        return
    prev_end, following, cpt = 0, start, _FIRST_CHARS_PER_TOKEN
    reach = max_tokens * _MAX_CHARS_PER_TOKEN + 2  # no window is longer, see _next_span
    while True:
        buf.ensure(start + reach, start - _LOOKBACK)
        span, cpt = _next_span(buf, start, prev_end, max_tokens, counter, cpt)
        if span.end <= prev_end:  # inside the previous span: drop the overlap this once
            buf.ensure(following + reach, following - _LOOKBACK)
            span, cpt = _next_span(buf, following, prev_end, max_tokens, counter, cpt)
        yield span
        shared = _overlap_start(buf, span, overlap_tokens) if overlap_tokens else None
        keep = span.end if shared is None else shared  # a long blank run is kept only here
        after = buf.non_space(span.end, keep - _LOOKBACK)
        if after is None:
            return
        following, prev_end = after, span.end
        start = following if shared is None else shared


def _next_span(
    buf: _Buffer, start: int, must_pass: int, max_tokens: int, counter: TokenCounter, cpt: float
) -> tuple[Span, float]:
    """The span starting at ``start`` (non-whitespace), and the chars-per-token measured.

    Its end should lie beyond ``must_pass`` (the previous span's end) when the window
    allows. The window is at most ``_MAX_CHARS_PER_TOKEN`` characters per token long, so
    the buffer need hold no more. The loop only repeats for a counter that can count a
    prefix higher than the whole window; each round looks below the last end, so it stops.
    """
    text, base = buf.text, buf.base
    local, must = start - base, must_pass - base
    stop = min(len(text), local + max_tokens * _MAX_CHARS_PER_TOKEN)
    count_words = getattr(counter, "count_words", None)
    if count_words is not None:
        fast = _word_span(text, local, must, max_tokens, count_words, cpt, stop, buf.eof)
        if fast is not None:
            span, cpt = fast
            return Span(span.start + base, span.end + base, span.tokens), cpt
    hi, tokens = _fit(text, local, max_tokens, counter, cpt, stop)
    cpt = (hi - local) / max(tokens, 1)
    while True:
        cut = hi if hi == len(text) else _best_break(text, local, hi, must)
        end = local + len(text[local:cut].rstrip())
        if end != hi:
            tokens = counter.count(text[local:end])
        if tokens <= max_tokens:
            return Span(start, end + base, tokens), cpt
        hi, tokens = _shrink(text, local, end, tokens, max_tokens, counter)


def _word_span(
    text: str,
    start: int,
    must_pass: int,
    max_tokens: int,
    count_words: Callable[[list[str]], list[int]],
    cpt: float,
    stop: int,
    eof: bool,
) -> tuple[Span, float] | None:
    """The span at ``start`` counted once, word by word, for a counter whose counts add up
    over words split before a space that follows a non-space (``WordCounting``).

    ``None`` when the window guessed from ``cpt`` turns out too short or a word alone is
    over the limit: the general path takes over.
    """
    hi = min(stop, start + int(max_tokens * cpt * _WORD_WINDOW) + 16)
    words = _WORDS.findall(text, start, hi)
    if hi < len(text) or not eof:
        words.pop()  # the last word may go on past the window
    counts = list(accumulate(count_words(words)))
    ends = list(accumulate(map(len, words), initial=start))
    fit = bisect.bisect_right(counts, max_tokens)
    if fit == 0 or (fit == len(words) and hi < len(text)):
        return None
    limit = ends[fit]
    cut = limit if limit == len(text) and eof else _best_break(text, start, limit, must_pass)
    end = start + len(text[start:cut].rstrip())
    whole = bisect.bisect_right(ends, end) - 1  # words wholly inside the span
    tokens = counts[whole - 1] if whole else 0
    if ends[whole] < end:
        tokens += sum(count_words([text[ends[whole] : end]]))
    if tokens > max_tokens:
        return None
    return Span(start, end, tokens), (ends[-1] - start) / max(counts[-1], 1)


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
