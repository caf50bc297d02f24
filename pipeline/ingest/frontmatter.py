"""YAML front matter: what a ``.md`` or ``.txt`` file says about itself in its first lines.

    front_matter("---\\nresidency: [eu]\\n---\\n# Minutes\\n", field="residency")
    # {'residency': ['eu']}
    front_matter("# Minutes\\n", field="residency")        # None: no front matter

Front matter is a block at the very start of the text (after a byte-order mark, which
decoding already dropped): a line ``---``, YAML, then a line ``---`` or ``...``. It must
close within ``MAX_FRONT_MATTER_CHARS``. The block stays in the document's text (chunk
offsets refer to the file as written); only its values are read here.

A markdown file may also begin with ``---`` as a horizontal rule, so a block that is not a
YAML mapping is not front matter, with one exception that keeps residency safe: when such
a block (or an opening ``---`` never closed) has a line that starts with ``field:``, the
author meant front matter and got it wrong, and ``field`` is read as ``Unparsed``, which
residency treats as "allow nothing".
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import yaml

from pipeline.ingest.base import Unparsed

__all__ = ["MAX_FRONT_MATTER_CHARS", "front_matter", "read_front_matter"]

#: Front matter must open on the first line and close within this many characters.
MAX_FRONT_MATTER_CHARS = 64 * 1024

#: Lines after an opening ``---`` that never closes, searched for ``field:``.
_UNCLOSED_LINES = 20

_OPEN = re.compile(r"---[ \t]*\r?\n")
_CLOSE = re.compile(r"^(?:---|\.\.\.)[ \t]*\r?$", re.MULTILINE)


def front_matter(text: str, *, field: str) -> dict[str, Any] | None:
    """The front matter of ``text`` as a mapping, or ``None`` when it has none."""
    opening = _OPEN.match(text)
    if opening is None:
        return None
    head = text[opening.end() : MAX_FRONT_MATTER_CHARS]
    closing = _CLOSE.search(head)
    if closing is None:
        first_lines = "".join(head.splitlines(keepends=True)[:_UNCLOSED_LINES])
        return _broken(first_lines, field, "its front matter has no closing '---' line")
    block = head[: closing.start()]
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        return _broken(block, field, f"its front matter is not valid YAML ({_first_line(exc)})")
    if not isinstance(data, dict):
        return _broken(block, field, "its front matter is not a YAML mapping")
    return {str(key): value for key, value in data.items()}


def read_front_matter(path: Any, encoding: str, *, field: str) -> dict[str, Any] | None:
    """``front_matter`` of a file on disk, reading only its head (for streamed documents).

    ``encoding`` is the one the document was decoded with; an ``OSError`` propagates.
    """
    with open(path, "rb") as f:
        head = f.read(4 * MAX_FRONT_MATTER_CHARS)  # 4 bytes per character at most in UTF-8
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    return front_matter(decoder.decode(head), field=field)


def _broken(block: str, field: str, why: str) -> dict[str, Any] | None:
    if re.search(rf"^{re.escape(field)}[ \t]*:", block, re.MULTILINE) is None:
        return None  # a horizontal rule, or front matter that says nothing of ``field``
    return {field: Unparsed(why)}


def _first_line(exc: yaml.YAMLError) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
