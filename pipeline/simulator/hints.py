"""Plausible raw material for answers, pulled from a chunk's text with a few regexes.

Each list is computed on first use and in order of appearance, so answers built from it
are deterministic:

    >>> h = hints_for("Acme Corp pays EUR 1,200.50 on 3 March 2024. Beta Ltd signs.")
    >>> h.sentences
    ['Acme Corp pays EUR 1,200.50 on 3 March 2024.', 'Beta Ltd signs.']
    >>> h.phrases, h.dates, h.amounts, h.currency
    (['Acme Corp', 'Beta Ltd'], ['2024-03-03'], [1200.5], 'EUR')
"""

from __future__ import annotations

import re
from datetime import date
from functools import cached_property, lru_cache


def _words(spaced: str) -> frozenset[str]:
    return frozenset(spaced.split())


_MONTH_NAMES = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_MONTHS = {name: i + 1 for i, name in enumerate(_MONTH_NAMES)}
_MONTH_TITLES = tuple(name.title() for name in _MONTH_NAMES)
# Python's re scans fast only for patterns that open with a character class, so these
# open with a digit, a capital or a sign (no \b, look-behinds or word alternations), and
# word boundaries and month names are checked in Python. This keeps a request's text work
# well under a millisecond for chunks of a few thousand characters.
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?!\d)")
_DAY_MONTH_YEAR = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?\s+([A-Z][a-z]{2,8})\s+(\d{4})(?!\d)")
_MONTH_DAY_YEAR = re.compile(r"([A-Z][a-z]{2,8})\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})(?!\d)")
_DATE_FORMS = ((_ISO_DATE, "ymd"), (_DAY_MONTH_YEAR, "dmy"), (_MONTH_DAY_YEAR, "mdy"))
_NUMBER_TOKEN = re.compile(r"-?\d[\d,.]*")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_CURRENCY_MARK = re.compile(r"[€$£¥A-Z][A-Z]*")
_CURRENCY_CODES = _words("EUR USD GBP CHF JPY CAD AUD SEK NOK DKK PLN CNY INR")
_CURRENCY_SYMBOL = {"€": "EUR", "$": "USD", "£": "GBP", "¥": "JPY"}
_AMOUNT_AFTER = re.compile(r"\s?(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")
# Markdown: a blank line, heading, list item or quote starts a new block; the markers
# themselves and emphasis are dropped from sentences.
_BLOCK_START = r"[ \t]{0,3}(?:#{1,6}|[-*+>]|\d{1,3}[.)])[ \t]"
_BLOCK_BREAK = re.compile(rf"\n\s*\n|\n(?={_BLOCK_START})")
_MARKUP = re.compile(rf"^{_BLOCK_START}+|\*+|__|`")
_ORG_SUFFIXES = _words("gmbh ag kg ltd llc inc plc sa sas sarl bv nv ab oy spa srl corp co lp llp")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_CAPS = "A-ZÀ-ÖØ-Þ"
_CAP_WORD = rf"[{_CAPS}][\w&'’-]*"
_CAP_RUN = re.compile(rf"{_CAP_WORD}(?:[ ]+(?:(?:of|for|de|la|von|van|der|du|&)[ ]+)?{_CAP_WORD})*")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"https?://[^\s<>\"')]+")


_STOP = _words(
    "a an and as at but by each for from he her his if in it its no not of on or our "
    "she so that the their these they this those to we with yes you your "
    "dr mr mrs ms prof eur usd gbp chf jpy cad aud sek nok dkk pln cny inr"
)
#: Words after which a full stop does not end a sentence.
_ABBREVIATIONS = _words("inc ltd co corp dr mr mrs ms prof st no vs e.g i.e etc art sec")


def _to_float(raw: str) -> float:
    return float(raw.replace(",", ""))


class TextHints:
    """Sentences, capitalised phrases, dates, numbers and codes found in ``text``."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def lower(self) -> str:
        return self.text.lower()

    @cached_property
    def sentences(self) -> list[str]:
        """Sentences of prose; headings, list items and paragraphs end one too."""
        merged: list[str] = []
        for block in _BLOCK_BREAK.split(self.text):
            flat = " ".join(_MARKUP.sub("", block).split())
            start = len(merged)
            for piece in _SENTENCE_END.split(flat):
                if len(merged) > start and _ends_with_abbreviation(merged[-1]):
                    merged[-1] += " " + piece
                elif piece:
                    merged.append(piece)
        return merged

    @cached_property
    def phrases(self) -> list[str]:
        text = self.text
        seen: dict[str, None] = {}
        for match in _CAP_RUN.finditer(text):
            start, raw = match.start(), match.group()
            if start and text[start - 1].isalnum():
                continue  # a capital inside a word ("iPhone")
            if " " not in raw and _starts_sentence(text, start):
                continue  # "Either party may…": capitalised only by position
            phrase = _clean_phrase(raw)
            if phrase:
                seen.setdefault(phrase, None)
        return list(seen)

    @cached_property
    def entities(self) -> list[str]:
        """Phrases most like names first: with a company suffix, then multi-word, then others."""
        return sorted(self.phrases, key=_entity_rank)

    @cached_property
    def _date_spans(self) -> list[tuple[int, int, str | None]]:
        """Every date-shaped span, with its ISO form when it is a real date."""
        found: list[tuple[int, int, str | None]] = []
        named_month = any(month in self.text for month in _MONTH_TITLES)
        for regex, order in _DATE_FORMS if named_month else _DATE_FORMS[:1]:
            for m in regex.finditer(self.text):
                parts = dict(zip(order, m.groups(), strict=True))
                if parts["m"].isdigit() or parts["m"].lower() in _MONTHS:
                    found.append((m.start(), m.end(), _iso_date(parts)))
        return sorted(found, key=lambda span: span[0])

    @cached_property
    def dates(self) -> list[str]:
        return list(dict.fromkeys(iso for _, _, iso in self._date_spans if iso))

    @cached_property
    def numbers(self) -> list[float]:
        """Numbers outside dates (the text with its dates blanked out, scanned once)."""
        text, pieces, at = self.text, [], 0
        for start, end, _ in self._date_spans:
            pieces += [text[at:start], " " * (end - start)]
            at = max(at, end)
        pieces.append(text[at:])
        masked = "".join(pieces)
        found = []
        for m in _NUMBER_TOKEN.finditer(masked):
            before = masked[m.start() - 1] if m.start() else " "
            token = m.group().rstrip(".,")
            if not (before.isalnum() or before in "_.,-") and _NUMBER.fullmatch(token):
                found.append(_to_float(token))
        return found

    @cached_property
    def _currency_marks(self) -> list[tuple[int, str]]:
        """(end offset, ISO code) of each currency sign or code, in order."""
        marks = []
        for m in _CURRENCY_MARK.finditer(self.text):
            code = _CURRENCY_SYMBOL.get(m.group()) or m.group()
            if code in _CURRENCY_CODES:
                marks.append((m.end(), code))
        return marks

    @cached_property
    def amounts(self) -> list[float]:
        """Numbers right after a currency sign or code; else all numbers."""
        found = []
        for end, _ in self._currency_marks:
            number = _AMOUNT_AFTER.match(self.text, end)
            if number:
                found.append(_to_float(number.group(1)))
        return found or self.numbers

    @cached_property
    def currency(self) -> str:
        """The first currency the text names, else USD."""
        return self._currency_marks[0][1] if self._currency_marks else "USD"

    @cached_property
    def emails(self) -> list[str]:
        return _EMAIL.findall(self.text) if "@" in self.text else []

    @cached_property
    def urls(self) -> list[str]:
        return [u.rstrip(".,;:") for u in _URL.findall(self.text)] if "://" in self.text else []


def _entity_rank(phrase: str) -> int:
    words = phrase.lower().replace(".", "").split()
    if any(w in _ORG_SUFFIXES for w in words[1:]):
        return 0
    return 1 if len(words) > 1 else 2


def _starts_sentence(text: str, at: int) -> bool:
    i = at - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    return i < 0 or text[i] in ".!?:;\"'(“"


def _ends_with_abbreviation(sentence: str) -> bool:
    last = sentence.rsplit(" ", 1)[-1].rstrip(".").lower()
    return sentence.endswith(".") and (last in _ABBREVIATIONS or len(last) == 1)


def _clean_phrase(raw: str) -> str:
    words = raw.split()
    while words and (words[0].lower() in _STOP or words[0].lower() in _MONTHS):
        words.pop(0)
    if words and words[-1].endswith(("'s", "’s")):
        words[-1] = words[-1][:-2]
    phrase = " ".join(words).strip("-'’&")
    return phrase if len(phrase) > 1 else ""


def _iso_date(parts: dict[str, str]) -> str | None:
    month = parts["m"]
    month_no = int(month) if month.isdigit() else _MONTHS[month.lower()]
    try:
        return date(int(parts["y"]), month_no, int(parts["d"])).isoformat()
    except ValueError:
        return None


@lru_cache(maxsize=512)
def hints_for(text: str) -> TextHints:
    """The (cached) hints of ``text``; retries and repairs of a chunk reuse them."""
    return TextHints(text)
