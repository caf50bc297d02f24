"""Token-bounded, offset-preserving, streaming chunker.

    counter = CharEstimate()
    for span in split_spans(text, max_tokens=800, overlap_tokens=64, counter=counter):
        text[span.start:span.end]   # the chunk; counter.count(it) == span.tokens <= 800

    chunks = chunk_document(doc, text, max_tokens=800, overlap_tokens=64, counter=counter,
                            regions=("eu",), residency_rule="eu/**")

This module walks a document span by span, reads a stream as the walk needs it, and
makes the spans into ``Chunk`` rows; ``pipeline.windows`` cuts each span, and
``pipeline.tokens`` holds the counters.

What it promises, for any ``TokenCounter``:

- every span's text is ``text[start:end]`` by construction (repeated passages keep their
  own offsets) and ``counter.count`` of it is ``span.tokens <= max_tokens``;
- spans start and end on non-whitespace, starts and ends both strictly increase, and
  together they cover every non-whitespace character; whitespace-only text has no span;
- consecutive spans share about ``overlap_tokens`` of text (never more than 3/4 of the
  earlier span, so the walk keeps moving), starting at a word when there is one;
- time is linear in ``len(text)``: each span looks only at its own window.

How one span is cut (``pipeline.windows``): find the longest window from its start that
the counter allows, then end the span at the best break in the window's second half, in
this order of preference:

1. a blank line, or the line before a markdown heading (but never the blank line right
   after a heading: a heading stays with its section);
2. a newline;
3. a sentence end (. ! ? and closing quotes or brackets, then whitespace);
4. whitespace;

and only when the window has no whitespace at all, cut it hard. Breaks in the first half
are passed over so spans stay near the limit instead of a line or two long. The breaks
are searched from the window's end backwards, so a span costs about the length of its
last line, not of its window (``pipeline.breaks``).

No window is longer than ``MAX_CHARS_PER_TOKEN`` characters per allowed token, which is
what lets ``split_spans_stream`` hold only a window of a long document and still give the
spans ``split_spans`` gives for the whole string.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Iterator, Sequence

from pipeline.breaks import HEADING_MAX_CHARS
from pipeline.models import Chunk, Document, stable_id
from pipeline.tokens import CharEstimate, TokenCounter
from pipeline.windows import MAX_CHARS_PER_TOKEN, Span, cutter

__all__ = [
    "CharEstimate",  # re-exported: the counter of the examples here
    "Span",  # re-exported: what split_spans gives
    "TokenCounter",  # re-exported: what every call here takes
    "chunk_document",
    "chunk_stream",
    "split_spans",
    "split_spans_stream",
]

_NON_SPACE = re.compile(r"\S")
_WORD_START = re.compile(r"(?<=\s)\S")
_LOOKBACK = HEADING_MAX_CHARS + 1  # kept before a span's start (the heading check)
_READ_AHEAD = 1 << 16  # a stream is read in at least this many characters at a time


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
    cut = cutter(counter, max_tokens)
    if not buf.eof:
        buf.ensure(_READ_AHEAD, 0)
    start = buf.non_space(0, 0)
    if start is None:
        return
    prev_end, following = 0, start
    reach = max_tokens * MAX_CHARS_PER_TOKEN + 2  # no window is longer (pipeline.windows)
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
