"""Path globs: one table of what matches, and the patterns that are refused."""

from __future__ import annotations

import pytest

from pipeline.globs import compile_glob, glob_match

CASES = [
    # pattern, path, matches
    ("eu/**", "eu/a.txt", True),
    ("eu/**", "eu/x/y.md", True),
    ("eu/**", "eu", True),  # zero segments
    ("eu/**", "eux/a.txt", False),
    ("eu/**", "us/eu/a.txt", False),
    ("**/*.md", "a.md", True),
    ("**/*.md", "x/a.md", True),
    ("**/*.md", "x/y/z/a.md", True),
    ("**/*.md", "a.txt", False),
    ("**/*.md", "a.md.txt", False),
    ("*.md", "a.md", True),
    ("*.md", "x/a.md", False),  # "*" never crosses "/"
    ("*", "a", True),
    ("*", "a/b", False),
    ("**", "a/b/c", True),
    ("a/*/c", "a/b/c", True),
    ("a/*/c", "a/b/x/c", False),
    ("a/*/c", "a/c", False),
    ("a/**/c", "a/c", True),
    ("a/**/c", "a/b/c", True),
    ("a/**/c", "a/b/x/c", True),
    ("a/**/c", "a/bc", False),
    ("a/**/**/c", "a/c", True),  # repeated "**" folds into one
    ("**/eu/**", "x/eu/y/z.txt", True),
    ("**/eu/**", "x/neu/y.txt", False),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("a?c", "a/c", False),  # "?" never matches "/"
    ("[abc].txt", "b.txt", True),
    ("[abc].txt", "d.txt", False),
    ("[a-c]x", "cx", True),
    ("[a-c]x", "dx", False),
    ("[!a-c]x", "dx", True),
    ("[!a-c]x", "ax", False),
    ("[^a]x", "bx", True),
    ("[]]", "]", True),
    ("[!]]", "a", True),
    ("[!]]", "]", False),
    ("[.-0]", "/", False),  # a range spanning "/" still never matches it
    ("[.-0]", ".", True),
    ("a.b", "axb", False),  # regex characters are literal
    ("a+b(c)", "a+b(c)", True),
    ("$x^", "$x^", True),
    ("a\\b", "a\\b", True),
    ("Docs/*.md", "docs/a.md", False),  # case-sensitive
    ("résumé/**", "résumé/日本.txt", True),
    ("a.txt", "a.txt\n", False),  # whole path only
    ("*.txt", "dir/.hidden.txt", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), CASES)
def test_glob_semantics(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected


@pytest.mark.parametrize(("pattern", "path", "expected"), CASES)
def test_compiled_pattern_is_anchored_for_every_method(pattern, path, expected) -> None:
    regex = compile_glob(pattern)
    results = (regex.match(path), regex.fullmatch(path), regex.search(path))
    assert [r is not None for r in results] == [expected] * 3


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("", "empty"),
        ("/eu/**", "relative"),
        ("eu//a", "empty, '.' or '..' segment"),
        ("./eu/**", "'.' or '..'"),
        ("eu/../us", "'.' or '..'"),
        ("eu/", "empty"),
        ("**.md", "'\\*\\*' must be a whole segment"),
        ("eu/a**", "whole segment"),
        ("a[bc", "never closed"),
        ("[!", "never closed"),
        ("[z-a]", "reversed"),
    ],
)
def test_invalid_patterns_are_value_errors_naming_the_pattern(pattern, complaint) -> None:
    with pytest.raises(ValueError, match=complaint) as info:
        compile_glob(pattern)
    assert repr(pattern) in str(info.value)


def test_compiled_patterns_are_cached() -> None:
    assert compile_glob("cache/**/*.md") is compile_glob("cache/**/*.md")
