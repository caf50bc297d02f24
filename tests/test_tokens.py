"""Offline tiktoken counters: found in the project's folder, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import tokens
from pipeline.tokens import (
    ESTIMATE,
    CharEstimate,
    TiktokenCounter,
    TokenizerFilesMissing,
    get_counter,
)

HAVE_FILES = all(
    (folder / tokens.cache_key(e)).is_file()
    for e in tokens.ENCODINGS
    for folder in tokens.search_dirs()[-1:]
)
needs_files = pytest.mark.skipif(
    not HAVE_FILES,
    reason=f"no BPE files in {tokens.PROJECT_DIR}: run `python -m pipeline.tokens fetch`",
)
SAMPLE = "The quick brown fox — jumps over 13 lazy dogs.\n\n  Indented:  done!  日本語 🙂"


@needs_files
@pytest.mark.parametrize("encoding", tokens.ENCODINGS)
def test_counts_match_tiktoken_loaded_from_the_project_folder(encoding, monkeypatch) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    counter = get_counter(f"tiktoken:{encoding}")
    assert counter.name == f"tiktoken:{encoding}"
    assert isinstance(counter, TiktokenCounter)
    assert counter.count(SAMPLE) == len(counter.encoding.encode_ordinary(SAMPLE))
    assert counter.count("hello world") == 2
    assert counter.count_words(["hello", " world"]) == [1, 1]


@needs_files
def test_auto_is_tiktoken_when_the_files_are_here(monkeypatch) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    assert get_counter("auto").name == "tiktoken:o200k_base"


def test_missing_files_give_an_error_saying_how_to_get_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "PROJECT_DIR", tmp_path / "none")
    with pytest.raises(TokenizerFilesMissing, match=r"python -m pipeline\.tokens fetch") as err:
        get_counter("tiktoken:cl100k_base")
    assert err.value.searched == (tmp_path, tmp_path / "none")
    assert tokens.cache_key("cl100k_base") in str(err.value)


def test_a_file_with_the_wrong_hash_is_not_used(tmp_path, monkeypatch) -> None:
    (tmp_path / tokens.cache_key("o200k_base")).write_bytes(b"not the file")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "PROJECT_DIR", tmp_path)
    with pytest.raises(TokenizerFilesMissing):
        TiktokenCounter("o200k_base")


def test_auto_falls_back_to_the_calibrated_estimate(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "PROJECT_DIR", Path(tmp_path / "none"))
    counter = get_counter("auto")
    assert counter is ESTIMATE and counter.name == "chars/3.5"
    assert counter.count("x" * 7) == 2 and get_counter("chars") is ESTIMATE


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown counter 'tiktoken:gpt2'"):
        get_counter("tiktoken:gpt2")
    with pytest.raises(ValueError, match="encoding must be one of"):
        TiktokenCounter("p50k_base")  # type: ignore[arg-type]


def test_cache_key_is_tiktokens_and_the_hash_comes_from_tiktoken() -> None:
    assert tokens.cache_key("cl100k_base") == "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
    assert tokens.expected_sha256("o200k_base").startswith("446a9538")


def test_char_estimate_ratio_is_checked() -> None:
    assert CharEstimate(2.5).count("abcdef") == 3
    with pytest.raises(ValueError, match="chars_per_token must be > 0"):
        CharEstimate(0)


@needs_files
def test_remembered_words_are_forgotten_in_bulk_without_losing_counts(monkeypatch) -> None:
    monkeypatch.setattr(tokens, "_KNOWN_WORDS", 3)
    counter = TiktokenCounter("cl100k_base")
    words = [" one", " two", " three", " four", " five", " one"]
    for _ in range(3):
        assert counter.count_words(words) == [counter.count(w) for w in words]
