"""Token mode with tiktoken (counted word by word) and the streaming splitter."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import tokens
from pipeline.chunking import split_spans, split_spans_stream
from pipeline.tokens import CharEstimate
from pipeline.windows import _WORDS
from tests.test_chunking import COUNTERS, TEXTS, assert_well_formed, limits

pytestmark = pytest.mark.skipif(
    not all((tokens.PROJECT_DIR / tokens.cache_key(e)).is_file() for e in tokens.ENCODINGS),
    reason=f"no BPE files in {tokens.PROJECT_DIR}: run `python -m pipeline.tokens fetch`",
)

PROSE = [
    Path("/usr/share/common-licenses/GPL-3"),
    Path("/usr/share/common-licenses/Apache-2.0"),
]


@pytest.fixture(scope="module", params=tokens.ENCODINGS)
def counter(request) -> tokens.TiktokenCounter:
    return tokens.TiktokenCounter(request.param)


WHITESPACE_HEAVY = st.lists(
    st.sampled_from(
        ["word", "x.", ",", " ", "  ", "\n", "\r\n", "\t", "\n  ", " \n", "'s", "12345",
         "日本", "🙂", "\u00a0", "\u2028", "\x0b", "!!", "-", "/"]
    ),
    max_size=60,
).map("".join)  # fmt: skip


@st.composite
def token_limits(draw) -> tuple[int, int]:
    """At least 4 tokens: one character is up to 4 bytes, so up to 4 tokens."""
    max_tokens = draw(st.integers(4, 80))
    return max_tokens, draw(st.integers(0, max_tokens - 1))


PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(text=st.one_of(WHITESPACE_HEAVY, TEXTS))
def test_counts_add_up_over_words(counter, text) -> None:
    text = text.rstrip()
    assert sum(counter.count_words(_WORDS.findall(text))) == counter.count(text)


@PROPS
@given(text=st.one_of(WHITESPACE_HEAVY, TEXTS), lim=token_limits())
def test_token_spans_are_exact_bounded_covering_and_moving(counter, text, lim) -> None:
    max_tokens, overlap = lim
    spans = list(split_spans(text, max_tokens=max_tokens, overlap_tokens=overlap, counter=counter))
    assert_well_formed(text, spans, counter, max_tokens)
    again = split_spans(text, max_tokens=max_tokens, overlap_tokens=overlap, counter=counter)
    assert list(again) == spans


@pytest.mark.parametrize("path", PROSE, ids=lambda p: p.name)
def test_real_prose_at_512_tokens(counter, path) -> None:
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    text = path.read_text()
    spans = list(split_spans(text, max_tokens=512, overlap_tokens=64, counter=counter))
    assert_well_formed(text, spans, counter, 512)
    assert sum(s.tokens for s in spans) / len(spans) > 400  # near the limit, not tiny


@PROPS
@given(text=TEXTS, lim=limits(), counter=COUNTERS, cuts=st.lists(st.integers(0, 2000)))
def test_the_stream_gives_the_whole_strings_spans(text, lim, counter, cuts) -> None:
    max_tokens, overlap = lim
    whole = list(split_spans(text, max_tokens=max_tokens, overlap_tokens=overlap, counter=counter))
    at = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    blocks = [text[a:b] for a, b in pairwise(at)]
    streamed = list(
        split_spans_stream(blocks, max_tokens=max_tokens, overlap_tokens=overlap, counter=counter)
    )
    assert [s for s, _ in streamed] == whole
    assert [c for _, c in streamed] == [text[s.start : s.end] for s in whole]


def test_a_long_stream_in_small_blocks_equals_the_whole_text(counter) -> None:
    text = "".join(p.read_text() for p in PROSE if p.is_file()) * 3
    text += "\n\n" + " " * 200_000 + "tail " + "x" * 5_000
    kw = {"max_tokens": 200, "overlap_tokens": 20, "counter": counter}
    whole = list(split_spans(text, **kw))
    blocks = (text[i : i + 777] for i in range(0, len(text), 777))
    assert [s for s, _ in split_spans_stream(blocks, **kw)] == whole
    chars = list(split_spans(text, max_tokens=200, overlap_tokens=20, counter=CharEstimate()))
    blocks = (text[i : i + 4096] for i in range(0, len(text), 4096))
    streamed = split_spans_stream(blocks, max_tokens=200, overlap_tokens=20, counter=CharEstimate())
    assert [s for s, _ in streamed] == chars
