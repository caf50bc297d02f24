"""The chunker: exact offsets, the token limit, coverage, breaks, overlap, linear work."""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.breaks import best_break, ends_a_heading, trimmed
from pipeline.chunking import chunk_document, split_spans
from pipeline.models import Document, stable_id
from pipeline.tokens import CharEstimate
from pipeline.windows import Span

CHARS = CharEstimate()


class WordCounter:
    """One token per run of non-whitespace: whitespace is free, long words are cheap."""

    name = "words"

    def count(self, text: str) -> int:
        return len(text.split())


class Utf8Counter:
    """Density varies with the script: ASCII 4 chars per token, CJK and emoji far fewer."""

    name = "utf8/4"

    def count(self, text: str) -> int:
        return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4


class JumpyCounter:
    """Not monotone: text ending in whitespace is free, so a window fits that its own
    trimmed prefix does not ("abcdef " 0, "abcdef" 3)."""

    name = "jumpy"

    def count(self, text: str) -> int:
        return 0 if text[-1:].isspace() else len(text) // 3 + 1


class MeteredCounter:
    """Counts like ``CharEstimate`` and adds up how many characters it was shown."""

    name = "metered"

    def __init__(self) -> None:
        self.seen = 0

    def count(self, text: str) -> int:
        self.seen += len(text)
        return (len(text) + 3) // 4


def spans_of(text: str, max_tokens: int, overlap: int = 0, counter=CHARS) -> list[Span]:
    return list(split_spans(text, max_tokens=max_tokens, overlap_tokens=overlap, counter=counter))


def pieces(text: str, spans: list[Span]) -> list[str]:
    return [text[s.start : s.end] for s in spans]


def assert_well_formed(text: str, spans: list[Span], counter, max_tokens: int) -> None:
    """Everything ``split_spans`` promises for any text and counter."""
    if not text.strip():
        assert spans == []
        return
    assert spans, "non-blank text must have spans"
    for span in spans:
        assert 0 <= span.start < span.end <= len(text)
        chunk = text[span.start : span.end]
        assert counter.count(chunk) == span.tokens <= max_tokens
        assert not chunk[0].isspace() and not chunk[-1].isspace(), span
    for before, after in pairwise(spans):
        assert after.start > before.start, "progress"
        assert after.end > before.end, "each span reaches further"
        gap = text[before.end : after.start]
        assert after.start <= before.end or gap.isspace(), f"dropped {gap!r}"
    assert text[: spans[0].start].strip() == ""
    assert text[spans[-1].end :].strip() == ""


# ── properties ────────────────────────────────────────────────────────────────────────

PIECES = st.sampled_from(
    [
        "word", "Wörter", "日本語の文", "🙂", "a", ".", "!", "?", "”", " ", "  ", "\t",
        "\n", "\r\n", "\n\n", "\r\n\r\n", "\n# Heading\n", "\u00a0", "\u2028", "e.g. ",
    ]
)  # fmt: skip
LONG_WORDS = st.integers(1, 400).map(lambda k: "y" * k)
BASE = st.lists(st.one_of(PIECES, LONG_WORDS, st.text(max_size=12)), max_size=120).map("".join)
REPEATED = st.tuples(BASE, st.integers(2, 8)).map(lambda t: t[0] * t[1])
TEXTS = st.one_of(BASE, REPEATED)
COUNTERS = st.sampled_from([CHARS, WordCounter(), Utf8Counter(), JumpyCounter()])


@st.composite
def limits(draw) -> tuple[int, int]:
    max_tokens = draw(st.integers(1, 60))
    return max_tokens, draw(st.integers(0, max_tokens - 1))


PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(text=TEXTS, lim=limits(), counter=COUNTERS)
def test_spans_are_exact_bounded_covering_and_moving(text, lim, counter) -> None:
    max_tokens, overlap = lim
    assert_well_formed(text, spans_of(text, max_tokens, overlap, counter), counter, max_tokens)


@PROPS
@given(text=TEXTS, lim=limits())
def test_chunks_are_deterministic_with_ids_from_offset_and_text(text, lim) -> None:
    max_tokens, overlap = lim
    doc = Document.at(Path("/c"), Path("/c/a/doc.md"), len(text))

    def chunks() -> list:
        return list(
            chunk_document(
                doc, text, max_tokens=max_tokens, overlap_tokens=overlap, counter=CHARS,
                regions=("eu",), residency_rule="eu/**",
            )
        )  # fmt: skip

    first, again = chunks(), chunks()
    assert first == again
    assert [c.index for c in first] == list(range(len(first)))
    assert len({c.chunk_id for c in first}) == len(first)
    for c in first:
        assert c.text == text[c.char_start : c.char_end]
        assert c.chunk_id == stable_id(doc.doc_id, c.char_start, c.text)


# ── arguments and edges ───────────────────────────────────────────────────────────────


def test_char_estimate_rounds_up() -> None:
    assert CHARS.name == "chars/4"
    assert [CHARS.count("x" * k) for k in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    ("max_tokens", "overlap", "complaint"),
    [
        (0, 0, "max_tokens must be an integer >= 1, got 0"),
        (-5, 0, "max_tokens must be an integer >= 1, got -5"),
        (2.5, 0, "max_tokens must be an integer >= 1, got 2.5"),
        (10, 10, "overlap_tokens must .* < max_tokens (10), got 10"),
        (10, -1, "overlap_tokens must .*, got -1"),
        (10, 11, "overlap_tokens must .*, got 11"),
    ],
)
def test_bad_limits_are_refused_at_the_call(max_tokens, overlap, complaint) -> None:
    with pytest.raises(ValueError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        split_spans("some text", max_tokens=max_tokens, overlap_tokens=overlap, counter=CHARS)


@pytest.mark.parametrize("text", ["", " ", "\n\r\n\t ", "\u00a0\u2028"])
def test_blank_text_has_no_spans(text) -> None:
    assert spans_of(text, 10) == []


def test_short_text_is_one_span_without_its_surrounding_whitespace() -> None:
    text = "\n  Hello world.  \r\n"
    assert spans_of(text, 100) == [Span(3, 15, 3)]


def test_a_counter_that_cannot_fit_one_character_is_an_error() -> None:
    class Heavy:
        name = "heavy"

        def count(self, text: str) -> int:
            return 3 * len(text)

    with pytest.raises(ValueError, match="max_tokens=2 is too small for counter 'heavy'"):
        spans_of("abc", 2, counter=Heavy())


def test_returns_a_lazy_iterator() -> None:
    assert isinstance(split_spans("a b", max_tokens=5, overlap_tokens=0, counter=CHARS), Iterator)


# ── where spans end ───────────────────────────────────────────────────────────────────

FILL = "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


def test_blank_line_beats_newline_sentence_and_space() -> None:
    # window = 100 chars; the blank line sits in its second half, the rest later.
    text = FILL[:60] + "end.\n\nNext para.\nline two. more words " + FILL
    assert pieces(text, spans_of(text, 25))[0] == FILL[:60] + "end."


def test_line_before_a_markdown_heading_counts_as_a_paragraph_break() -> None:
    text = FILL[:60] + "end.\n## Heading\nline two. more words " + FILL
    assert pieces(text, spans_of(text, 25))[0] == FILL[:60] + "end."


def test_a_heading_is_not_left_at_the_end_of_a_span() -> None:
    text = FILL[:60] + "end.\n\n## Risks\n\nThe risks are these words " + FILL
    assert pieces(text, spans_of(text, 25))[0] == FILL[:60] + "end."


def test_newline_beats_sentence_end_and_space() -> None:
    text = FILL[:60] + "no stop\nA sentence. Then more words " + FILL
    assert pieces(text, spans_of(text, 25))[0] == FILL[:60] + "no stop"


def test_sentence_end_beats_space() -> None:
    text = FILL[:60] + "stop!) And then many more words " + FILL
    assert pieces(text, spans_of(text, 25))[0] == FILL[:60] + "stop!)"


def test_space_beats_a_hard_cut() -> None:
    text = FILL + FILL
    first = pieces(text, spans_of(text, 25))[0]
    assert text.startswith(first + " ") and len(first) > 50


def test_a_space_just_after_the_window_is_a_break() -> None:
    text = "a " + "x" * 98 + " " + "y" * 10
    assert pieces(text, spans_of(text, 25))[0] == text[:100]


def test_breaks_in_the_first_half_are_passed_over() -> None:
    text = "Tiny.\n\n" + FILL + FILL
    assert len(pieces(text, spans_of(text, 25))[0]) > 50


def test_a_word_longer_than_the_limit_is_cut_hard_and_fully() -> None:
    text = "x" * 1000
    spans = spans_of(text, 10)
    assert [(s.start, s.end) for s in spans] == [(i, i + 40) for i in range(0, 1000, 40)]


def test_crlf_is_never_split_and_not_changed() -> None:
    text = "".join(f"Line {i} has some words.\r\n" for i in range(200))
    spans = spans_of(text, 12, 3)
    assert_well_formed(text, spans, CHARS, 12)
    for chunk in pieces(text, spans):
        assert not chunk.startswith("\n") and not chunk.endswith("\r")


# ── overlap ───────────────────────────────────────────────────────────────────────────


def test_overlap_is_about_the_asked_tokens_and_starts_at_a_word() -> None:
    text = (FILL + "Sed ut perspiciatis. ") * 60
    spans = spans_of(text, 50, 10)
    assert len(spans) > 10
    for before, after in pairwise(spans):
        shared = text[after.start : before.end]
        assert 6 <= CHARS.count(shared) <= 10, shared
        assert text[after.start - 1] == " "


def test_overlap_near_the_limit_still_moves_a_quarter_span() -> None:
    text = ("Short para here.\n\n" + FILL) * 40
    spans = spans_of(text, 50, 49)
    for before, after in pairwise(spans):
        assert after.start - before.start >= (before.end - before.start) // 4


def test_jumpy_counter_limit_holds_where_the_window_fit_but_its_prefix_does_not() -> None:
    counter = JumpyCounter()
    text = "abcdef ghijkl mnopqr stuvwx " * 20
    assert counter.count("abcdef ") <= 2 < counter.count("abcdef")
    for max_tokens in range(2, 30):
        assert_well_formed(text, spans_of(text, max_tokens, 0, counter), counter, max_tokens)


def test_no_overlap_means_spans_meet_at_whitespace() -> None:
    text = (FILL + "Sed ut perspiciatis.\n") * 60
    spans = spans_of(text, 50, 0)
    for before, after in pairwise(spans):
        assert text[before.end : after.start].isspace()


def test_overlap_inside_a_long_word_is_cut_there() -> None:
    text = "x" * 400
    spans = spans_of(text, 10, 5)
    assert [s.start for s in spans[:3]] == [0, 20, 40]  # 40-char spans, 20 chars shared


# ── repeated passages, ids ────────────────────────────────────────────────────────────


def test_repeated_passages_get_their_own_offsets_and_ids() -> None:
    passage = "The same sentence again. "
    text = passage * 400
    doc = Document.at(Path("/c"), Path("/c/r.txt"), len(text))
    chunks = list(
        chunk_document(
            doc, text, max_tokens=20, overlap_tokens=0, counter=CHARS,
            regions=("eu", "us"), residency_rule="**",
        )
    )  # fmt: skip
    texts = [c.text for c in chunks]
    assert len(set(texts)) < len(texts), "the test needs identical chunk texts"
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    assert [c.char_start for c in chunks] == sorted({c.char_start for c in chunks})
    for c in chunks:
        assert text[c.char_start : c.char_end] == c.text
        assert (c.doc_id, c.path, c.regions, c.residency_rule) == (
            doc.doc_id, "r.txt", ("eu", "us"), "**",
        )  # fmt: skip
        assert c.token_estimate == CHARS.count(c.text) <= 20


# ── linear work ───────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x" * 2_000_000, id="no whitespace"),
        pytest.param("a " + " " * 2_000_000 + "b", id="huge whitespace gap"),
        pytest.param("ab\n" * 700_000, id="short lines"),
        pytest.param((FILL + "Quis nostrud? ") * 20_000, id="prose"),
        pytest.param(("word " * 50 + "\n\n") * 8_000, id="paragraphs"),
    ],
)
def test_the_counter_sees_each_character_a_bounded_number_of_times(text) -> None:
    counter = MeteredCounter()
    spans = spans_of(text, 200, 50, counter)
    assert_well_formed(text, spans, CHARS, 200)
    assert counter.seen <= 6 * len(text), counter.seen / len(text)


def test_twenty_megabytes_chunk_in_seconds() -> None:
    import time

    text = (FILL + "Quis nostrud exercitation? Ullamco laboris.\n\n") * 170_000
    assert len(text) > 20_000_000
    began = time.perf_counter()
    n = sum(1 for _ in spans_of(text, 800, 64))
    assert n > 5_000
    assert time.perf_counter() - began < 10  # measured ~0.1 s; quadratic would be hours


def test_sentence_regex_needs_whitespace_after_the_stop() -> None:
    text = FILL[:60] + "pi is 3.14159 and v1.2.3 words " + FILL
    first = pieces(text, spans_of(text, 25))[0]
    assert not re.search(r"3\.$|v1\.$", first)


# ── the backward break search equals a forward scan ───────────────────────────────────


def _forward_break(text: str, start: int, hi: int, must_pass: int) -> int:
    """The chunker's break rules as plain forward scans: the last match of each kind."""
    stop, lo = min(len(text), hi + 1), max(start + (hi - start) // 2, must_pass + 1)

    def last(pattern: str, lo: int, stop: int, end: bool = False) -> int:
        hits = [m.end() if end else m.start() for m in re.compile(pattern).finditer(text, lo, stop)]
        return hits[-1] if hits else -1

    paragraphs = [
        m.start()
        for m in re.compile(r"\n[^\S\n]*\n|\n(?=#{1,6}[ \t])").finditer(text, lo, stop)
        if not ends_a_heading(text, m.start())
    ]
    for cut in (
        max(paragraphs, default=-1),
        text.rfind("\n", lo, stop),
        last(r"[.!?]+[\"'”’)\]]*(?=\s)", lo, stop, end=True),
        last(r"\s+", lo, stop),
        last(r"\s+", max(start, must_pass) + 1, lo),
    ):
        if cut > start:
            return cut
    return hi


HEADED = st.lists(
    st.one_of(PIECES, st.sampled_from(["## H", "# x\n\n", "\n\n\n", " \n", "\n#\t", "a.)"])),
    min_size=1,
    max_size=80,
).map("".join)


@PROPS
@given(text=HEADED, data=st.data())
def test_the_break_search_from_the_end_finds_what_a_forward_scan_finds(text, data) -> None:
    starts = [i for i, ch in enumerate(text) if not ch.isspace()]
    if not starts:
        return
    start = data.draw(st.sampled_from(starts))
    hi = data.draw(st.integers(start + 1, len(text)))
    must_pass = data.draw(st.integers(0, hi))
    assert trimmed(text, start, best_break(text, start, hi, must_pass)) == trimmed(
        text, start, _forward_break(text, start, hi, must_pass)
    )


def test_a_length_counter_is_never_asked_to_count() -> None:
    class Blind(CharEstimate):
        def count(self, text: str) -> int:
            raise AssertionError("counted")

    text = (FILL + "Sed ut perspiciatis.\n\n") * 200
    assert spans_of(text, 50, 10, Blind()) == spans_of(text, 50, 10, CHARS)
