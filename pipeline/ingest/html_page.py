"""Web pages (``.html``, ``.htm``): the main text, without scripts, styles or page furniture.

    extract_html(doc, b"<nav>Home</nav><main><h1>Hi</h1><p>One <b>two</b></p></main>", opts)
    # ExtractedText(text='Hi\\n\\nOne two', encoding='utf-8')

The bytes are decoded like plain text (``decode_text``: the same binary sniffing and
encoding fallbacks), then parsed with selectolax's lexbor engine, an HTML5 parser that
accepts whatever a browser would and never fetches anything. Dropped: scripts, styles,
templates, forms and embedded media, and the boilerplate elements ``nav``, ``header``,
``footer`` and ``aside``. When the page marks its main content (``<main>``,
``role="main"``, else a single ``<article>``), only that is kept.

Each block element (paragraph, heading, list item, table row, …) becomes a paragraph of
its own, separated by a blank line, which is what the chunker splits on; inside a block,
runs of whitespace become one space, as a browser shows them. ``<pre>`` keeps its lines,
``<br>`` is a newline.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from selectolax.lexbor import LexborHTMLParser, LexborNode

from pipeline.ingest.base import DocumentError, ExtractedText, ExtractOptions
from pipeline.ingest.plaintext import decode_text
from pipeline.models import Document

__all__ = ["extract_html"]

#: Elements whose content is never part of the text.
DROPPED = (
    "script, style, noscript, template, svg, math, iframe, object, embed, canvas, form,"
    " button, select, nav, header, footer, aside, [hidden], [aria-hidden=true]"
)
#: Where the main content is, when the page says so; first match wins.
MAIN = ("main", "[role=main]")

#: Elements that stand apart from their neighbours: each one is a paragraph of the text.
BLOCK_TAGS = (
    "address article blockquote body caption dd details dialog div dl dt fieldset figcaption "
    "figure h1 h2 h3 h4 h5 h6 hr html li ol p pre section summary table ul"
)
_BLOCKS = frozenset(BLOCK_TAGS.split())
#: What an inline element adds before its content: rows are lines, cells are tab-separated.
_OPENERS = {"br": "\n", "tr": "\n", "td": "\t", "th": "\t"}
_BREAK = "\x00"  # a block boundary while walking; lexbor turns NUL in the page into U+FFFD
_PRE = "\x01"  # starts a block whose whitespace is kept as written
_SPACES = re.compile(r"[ \t\n\r\f\v]+")

_Stack = list[tuple["LexborNode | None", bool]]


def extract_html(doc: Document, data: bytes, options: ExtractOptions) -> ExtractedText:
    """The main text of a web page (see the module docstring)."""
    decoded = decode_text(doc, data)
    root = _main_content(LexborHTMLParser(decoded.text))
    text = _paragraphs("".join(_walk(root))) if root is not None else ""
    if not text:
        raise DocumentError(
            "no_text",
            f"{doc.path}: no text outside scripts, styles and navigation ({len(data):,} bytes)",
        )
    return ExtractedText(text=text, encoding=decoded.encoding, note=decoded.note)


def _main_content(tree: LexborHTMLParser) -> LexborNode | None:
    for node in tree.css(DROPPED):
        node.decompose()
    for selector in MAIN:
        main = tree.css_first(selector)
        if main is not None:
            return main
    articles = tree.css("article")
    return articles[0] if len(articles) == 1 else tree.body


def _walk(root: LexborNode) -> Iterator[str]:
    """Text pieces and block marks in document order; a loop, so nesting depth is free."""
    stack: _Stack = [(root, False)]
    while stack:
        node, in_pre = stack.pop()
        if node is None:  # the end of a block
            yield _BREAK
        elif node.is_text_node:
            text = (node.text_content or "").replace(_BREAK, "").replace(_PRE, "")
            yield text if in_pre else _SPACES.sub(" ", text)
        elif node.is_element_node:
            yield _open(node, in_pre, stack)


def _open(node: LexborNode, in_pre: bool, stack: _Stack) -> str:
    """What ``node`` adds before its content; its children (and block end) go on ``stack``."""
    tag = node.tag or ""
    in_pre = in_pre or tag == "pre"
    if tag in _BLOCKS:
        stack.append((None, in_pre))
    stack.extend((child, in_pre) for child in reversed(list(_children(node))))
    if tag == "pre":
        return _BREAK + _PRE
    return _BREAK if tag in _BLOCKS else _OPENERS.get(tag, "")


def _children(node: LexborNode) -> Iterator[LexborNode]:
    child = node.child
    while child is not None:
        yield child
        child = child.next


def _paragraphs(raw: str) -> str:
    """Blocks joined by one blank line; lines trimmed (``<pre>`` keeps its indentation)."""
    blocks = []
    for block in raw.split(_BREAK):
        if block.startswith(_PRE):
            lines = [line.rstrip() for line in block[1:].split("\n")]
        else:
            lines = [line.strip() for line in block.split("\n")]
        text = "\n".join(lines).strip("\n") if block.startswith(_PRE) else _join(lines)
        if text and not text.isspace():
            blocks.append(text)
    return "\n\n".join(blocks)


def _join(lines: list[str]) -> str:
    return "\n".join(line for line in lines if line)
