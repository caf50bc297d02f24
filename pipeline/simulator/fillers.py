"""Leaf values for generated answers, chosen from the text by the property's name.

A property name is split into words (``key_points`` → ``key``, ``points``) and the first
word found in a table below decides where its value comes from; ``index`` is the position
inside the nearest list, so the n-th key point is the n-th sentence:

    >>> from pipeline.simulator.hints import hints_for
    >>> h = hints_for("Acme Corp owes USD 99.5 since 2024-05-01. It is confidential.")
    >>> fill_string(h, "key_points", 1), fill_string(h, "parties", 0), fill_string(h, "due_date", 0)
    ('It is confidential.', 'Acme Corp', '2024-05-01')
    >>> fill_number(h, "total_amount", 0), fill_boolean(h, "is_confidential")
    (99.5, True)
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from .hints import TextHints

Kind = Literal[
    "summary", "title", "point", "entity", "date", "currency", "language", "email", "url",
    "id", "sentiment", "keyword", "amount", "year", "count", "score", "page", "other",
]  # fmt: skip

#: Where a property's value comes from, by the words of its name.
_KIND_TABLE: dict[Kind, str] = {
    "summary": "summary description abstract overview synopsis text content body excerpt quote "
               "context explanation reason rationale note comment detail message",
    "title": "title subject heading headline topic caption",
    "point": "point finding highlight bullet takeaway fact claim obligation risk issue clause "
             "step action sentence statement question answer condition item",
    "entity": "entity party name person people organization organisation company vendor "
              "supplier customer client author signatory counterparty buyer seller employer "
              "employee lender borrower landlord tenant owner recipient sender issuer contact "
              "brand place location city country region jurisdiction address",
    "date": "date dated deadline day",
    "currency": "currency",
    "language": "language lang locale",
    "email": "email mail",
    "url": "url link website uri href",
    "id": "id identifier reference ref code invoice",
    "sentiment": "sentiment tone",
    "keyword": "keyword tag category kind label genre type class",
    "amount": "amount value total price cost sum fee balance salary payment revenue budget "
              "subtotal tax net gross",
    "year": "year",
    "count": "count number num quantity qty",
    "score": "confidence score probability likelihood ratio share",
    "page": "page",
}  # fmt: skip
_KIND_WORDS = {word: kind for kind, words in _KIND_TABLE.items() for word in words.split()}
_SPECIFIC = frozenset(("currency", "language", "email", "url", "date", "year", "sentiment", "page"))
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NEGATIONS = frozenset(("is", "has", "was", "are", "were", "contains", "includes"))
_KEYWORD = re.compile(r"[^\W\d_]{6,}")
DEFAULT_DATE = "2024-01-01"


@lru_cache(maxsize=4096)
def name_words(name: str) -> tuple[str, ...]:
    """``"keyPoints"`` → ``("key", "points")``; lower case, split on ``_``, ``-``, camelCase."""
    return tuple(w for w in re.split(r"[_\-\s.]+", _CAMEL.sub("_", name).lower()) if w)


def _singular(word: str) -> str:
    if word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


@lru_cache(maxsize=4096)
def kind_of(name: str) -> Kind:
    """What a property named ``name`` holds.

    A specific word anywhere wins (``currency_code`` is a currency); otherwise the last
    known word decides (``party_names`` are entities).

    >>> kind_of("invoice_date"), kind_of("partyNames"), kind_of("currency_code"), kind_of("foo")
    ('date', 'entity', 'currency', 'other')
    """
    kinds = [
        kind
        for word in name_words(name)
        if (kind := _KIND_WORDS.get(word) or _KIND_WORDS.get(_singular(word)))
    ]
    specific = [k for k in kinds if k in _SPECIFIC]
    return specific[0] if specific else (kinds[-1] if kinds else "other")


def _pick(items: Sequence[Any], index: int, default: Any) -> Any:
    return items[index % len(items)] if items else default


def _sentences(hints: TextHints, start: int, count: int) -> str:
    sentences = hints.sentences
    if not sentences:
        return "No text was provided."
    start %= len(sentences)
    return " ".join(sentences[start : start + count])


def _keywords(hints: TextHints) -> list[str]:
    seen = dict.fromkeys(w.lower() for w in _KEYWORD.findall(hints.text))
    return list(seen)


def _stable_hex(hints: TextHints, name: str, index: int, digits: int) -> str:
    seed = f"{name}|{index}|{hints.text}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(seed).hexdigest()[:digits]


def fill_string(hints: TextHints, name: str, index: int) -> str:
    """A plausible string for a property called ``name``."""
    kind = kind_of(name)
    if kind == "summary":
        return _sentences(hints, index, 2)
    if kind == "title":
        return " ".join(_sentences(hints, index, 1).split()[:8]).rstrip(".,;:")
    if kind == "entity":
        return _pick(hints.entities, index, "Unknown")
    if kind == "date":
        return _pick(hints.dates, index, DEFAULT_DATE)
    if kind == "currency":
        return hints.currency
    if kind == "language":
        return "en"
    if kind == "email":
        return _pick(hints.emails, index, "contact@example.com")
    if kind == "url":
        return _pick(hints.urls, index, "https://example.com/")
    if kind == "id":
        return "ID-" + _stable_hex(hints, name, index, 8).upper()
    if kind == "sentiment":
        return "neutral"
    if kind == "keyword":
        return _pick(_keywords(hints), index, "general")
    return _sentences(hints, index, 1)


def fill_format(hints: TextHints, fmt: str, name: str, index: int) -> str | None:
    """A string in JSON Schema ``format`` ``fmt``, or None for formats left to ``fill_string``."""
    if fmt == "date":
        return _pick(hints.dates, index, DEFAULT_DATE)
    if fmt == "date-time":
        return _pick(hints.dates, index, DEFAULT_DATE) + "T00:00:00Z"
    if fmt == "time":
        return "00:00:00"
    if fmt == "email":
        return _pick(hints.emails, index, "contact@example.com")
    if fmt in ("uri", "url", "iri"):
        return _pick(hints.urls, index, "https://example.com/")
    if fmt == "uuid":
        h = _stable_hex(hints, name, index, 32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"
    if fmt == "duration":
        return "P1D"
    if fmt in ("hostname", "idn-hostname"):
        return "example.com"
    if fmt == "ipv4":
        return "127.0.0.1"
    if fmt == "ipv6":
        return "::1"
    return None


def fill_number(hints: TextHints, name: str, index: int) -> float:
    """A plausible number for a property called ``name`` (before range clamping)."""
    kind = kind_of(name)
    if kind == "amount":
        return _pick(hints.amounts, index, 0.0)
    if kind == "year":
        years = [int(d[:4]) for d in hints.dates]
        years += [int(n) for n in hints.numbers if n.is_integer() and 1900 <= n <= 2100]
        return _pick(years, index, 2024)
    if kind == "score":
        return 0.9
    if kind == "page":
        return 1
    if kind == "count":
        whole = [n for n in hints.numbers if n.is_integer() and n >= 0]
        return _pick(whole, index, len(hints.sentences))
    return _pick(hints.numbers, index, len(hints.sentences))


def fill_boolean(hints: TextHints, name: str) -> bool:
    """Whether the name's words are in the text (``is_confidential``: "confidential")."""
    words = [w for w in name_words(name) if w not in _NEGATIONS and len(w) > 2]
    return bool(words) and all(w in hints.lower for w in words)


def choose_enum(hints: TextHints, options: Sequence[Any], name: str, index: int) -> Any:
    """The option the text mentions (strings of 3+ characters), else one fixed by a hash."""
    mentioned = [
        o for o in options if isinstance(o, str) and len(o) >= 3 and o.lower() in hints.lower
    ]
    if mentioned:
        return mentioned[index % len(mentioned)]
    base = zlib.crc32(f"{name}|{hints.text[:256]}".encode("utf-8", "surrogatepass"))
    return options[(base + index) % len(options)]


def default_count(hints: TextHints, name: str) -> int:
    """How many items a list called ``name`` gets before minItems/maxItems apply."""
    kind = kind_of(name)
    if kind in ("point", "summary"):
        return min(3, len(hints.sentences))
    if kind == "entity":
        return min(3, len(hints.entities))
    if kind == "date":
        return min(3, len(hints.dates))
    if kind == "keyword":
        return min(3, len(_keywords(hints)))
    return 2
