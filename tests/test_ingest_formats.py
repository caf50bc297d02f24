"""Formats (html, pdf, docx, jsonl), nasty input, and ``extract_many`` (the process pool).

Every file is built here, in ``tmp_path``, with the libraries that write those formats.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import docx
import pypdf
import pytest
from reportlab.pdfgen import canvas

from pipeline.ingest import (
    DocumentError,
    ExtractedText,
    ExtractOptions,
    discover,
    extract_many,
    extract_text,
)
from pipeline.models import Document

MB = 1024 * 1024


def write(root: Path, rel: str, data: bytes | str) -> Document:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Document.at(root, path, path.stat().st_size)


def extract(doc: Document, **options: str) -> ExtractedText:
    return extract_text(doc, max_bytes=50 * MB, options=options or None)


def error(doc: Document, max_bytes: int = 50 * MB) -> DocumentError:
    with pytest.raises(DocumentError) as info:
        extract_text(doc, max_bytes=max_bytes)
    assert doc.path in info.value.message
    return info.value


def pdf_bytes(pages: list[str | None]) -> bytes:
    """A PDF with one page per item: its lines of text, or (None) only a drawn box."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for page in pages:
        if page is None:
            pdf.rect(72, 72, 200, 200, fill=1)  # what a scan has: marks, no text
        else:
            for i, line in enumerate(page.split("\n")):
                pdf.drawString(72, 720 - 14 * i, line)
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def encrypted(data: bytes, user: str, owner: str = "owner") -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.encrypt(user, owner_password=owner, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_bytes() -> bytes:
    d = docx.Document()
    d.add_heading("Quarterly report", 0)
    d.add_paragraph("Intro line one.")
    d.add_paragraph("")  # empty paragraphs are dropped
    d.add_paragraph("Intro line two.")
    d.add_heading("Figures", 1)
    table = d.add_table(rows=3, cols=3)
    for r, row in enumerate(
        [["year", "region", "sales"], ["2024", "EU", "12"], ["2025", "", "15"]]
    ):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    d.add_heading("Outlook", 2)
    d.add_paragraph("Up and to the right.")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


PAGE = """<!doctype html><html><head><title>Shop</title>
<style>p { color: red }</style><script>var tracking = "SCRIPT-TEXT";</script></head>
<body><header><h1>HEADER-TEXT</h1></header>
<nav><a href="/">NAV-TEXT</a></nav>
<main>
  <h1>Returns   policy</h1>
  <p>You may return <b>any</b> item
     within 30 days &amp; get a refund.</p>
  <div><div>Nested <span>inline</span> text.</div></div>
  <ul><li>Receipt</li><li>Original box</li></ul>
  <table><tr><th>Item</th><th>Days</th></tr><tr><td>Shoes</td><td>60</td></tr></table>
  <pre>code:
    indented</pre>
  <noscript>NOSCRIPT-TEXT</noscript><script>SCRIPT-TWO</script>
</main>
<aside>ASIDE-TEXT</aside><footer>FOOTER-TEXT</footer></body></html>"""


# ── html ──────────────────────────────────────────────────────────────────────────────


def test_html_keeps_the_main_text_as_paragraphs_without_boilerplate(tmp_path: Path) -> None:
    got = extract(write(tmp_path, "page.html", PAGE))
    assert got.text == (
        "Returns policy\n\n"
        "You may return any item within 30 days & get a refund.\n\n"
        "Nested inline text.\n\n"
        "Receipt\n\nOriginal box\n\n"
        "Item\tDays\nShoes\t60\n\n"
        "code:\n    indented"
    )
    assert got.encoding == "utf-8"
    for boilerplate in ["SCRIPT", "HEADER", "NAV", "ASIDE", "FOOTER", "NOSCRIPT", "color"]:
        assert boilerplate not in got.text


def test_html_without_main_uses_the_body_and_htm_works_too(tmp_path: Path) -> None:
    page = "<html><body><nav>menu</nav><p>One</p><p>Two<br>lines</p></body></html>"
    assert extract(write(tmp_path, "old.HTM", page)).text == "One\n\nTwo\nlines"


def test_html_that_is_all_boilerplate_has_no_text(tmp_path: Path) -> None:
    doc = write(tmp_path, "menu.html", "<nav><a>Home</a></nav><script>x()</script>")
    exc = error(doc)
    assert exc.reason == "no_text" and "navigation" in exc.message


def test_html_in_cp1252_and_deeply_nested_html(tmp_path: Path) -> None:
    got = extract(write(tmp_path, "w.html", "<p>Café – 5 €</p>".encode("cp1252")))
    assert (got.text, got.encoding) == ("Café – 5 €", "cp1252") and got.note
    deep = "<div>" * 20_000 + "bottom" + "</div>" * 20_000  # deeper than Python recursion
    assert extract(write(tmp_path, "deep.html", deep)).text == "bottom"


# ── pdf ───────────────────────────────────────────────────────────────────────────────


def test_pdf_pages_are_joined_by_blank_lines_and_page_starts_point_at_each(
    tmp_path: Path,
) -> None:
    pages = ["Page one says hello.", "Page two, line one.\nPage two, line two.", "Page three."]
    got = extract(write(tmp_path, "r.pdf", pdf_bytes(pages)))
    assert got.text == "\n\n".join(pages)
    assert got.page_starts == (0, 22, 63)
    for number, start in enumerate(got.page_starts):
        assert got.text[start:].startswith(pages[number])
    page_two = got.text[got.page_starts[1] : got.page_starts[2]]
    assert page_two == "Page two, line one.\nPage two, line two.\n\n"


def test_pdf_with_some_blank_pages_keeps_their_place(tmp_path: Path) -> None:
    got = extract(write(tmp_path, "mixed.pdf", pdf_bytes(["First", None, "Third"])))
    assert got.text == "First\n\n\n\nThird"
    assert got.page_starts == (0, 7, 9)
    assert got.text[got.page_starts[2] :] == "Third"


def test_image_only_pdf_is_no_text_and_says_it_needs_ocr(tmp_path: Path) -> None:
    exc = error(write(tmp_path, "scan.pdf", pdf_bytes([None, None])))
    assert exc.reason == "no_text"
    assert "2 page(s)" in exc.message and "scanned" in exc.message and "OCR" in exc.message


def test_encrypted_pdf_needs_a_password_unless_the_empty_one_opens_it(tmp_path: Path) -> None:
    data = pdf_bytes(["Secret text"])
    exc = error(write(tmp_path, "locked.pdf", encrypted(data, user="hunter2")))
    assert exc.reason == "encrypted" and "password" in exc.message
    assert extract(write(tmp_path, "open.pdf", encrypted(data, user=""))).text == "Secret text"


def test_truncated_and_fake_pdfs_are_unreadable_with_the_parsers_message(tmp_path: Path) -> None:
    data = pdf_bytes(["Some text"] * 3)
    truncated = error(write(tmp_path, "cut.pdf", data[: len(data) // 2]))
    assert truncated.reason == "unreadable"
    assert "not a readable PDF (PdfStreamError: Stream has ended unexpectedly)" in truncated.message
    fake = error(write(tmp_path, "fake.pdf", "just text, no PDF at all"))
    assert fake.reason == "unreadable" and "not a readable PDF (PdfStreamError" in fake.message


# ── docx ──────────────────────────────────────────────────────────────────────────────


def test_docx_paragraphs_headings_and_tables_in_order(tmp_path: Path) -> None:
    got = extract(write(tmp_path, "report.docx", docx_bytes()))
    assert got.text == (
        "Quarterly report\nIntro line one.\nIntro line two.\n\n"
        "Figures\n\n"
        "year\tregion\tsales\n2024\tEU\t12\n2025\t\t15\n\n"
        "Outlook\nUp and to the right."
    )


def test_broken_docx_files_are_unreadable(tmp_path: Path) -> None:
    data = docx_bytes()
    cut = error(write(tmp_path, "cut.docx", data[: len(data) // 2]))
    assert cut.reason == "unreadable" and "not a readable .docx (BadZipFile" in cut.message
    ole = error(write(tmp_path, "locked.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 500))
    assert ole.reason == "unreadable" and "password-protected" in ole.message


# ── jsonl ─────────────────────────────────────────────────────────────────────────────


def test_jsonl_records_become_sections_and_bad_lines_are_counted(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "a-1", "text": "First record."}),
        "not json at all",
        json.dumps({"id": 2, "body": "no text field"}),
        "",  # blank lines are not records
        json.dumps({"text": "No id here.\u2028Still the same line."}),
        json.dumps(["a", "list"]),
        json.dumps({"id": 3, "text": 42}),
    ]
    got = extract(write(tmp_path, "r.jsonl", "\n".join(lines) + "\n"))
    assert got.text == "[a-1]\nFirst record.\n\nNo id here.\u2028Still the same line."
    assert got.note == "4 of 6 lines skipped: not JSON or no 'text' field"


def test_jsonl_fields_are_configurable_and_checked(tmp_path: Path) -> None:
    doc = write(tmp_path, "r.jsonl", '{"key": "k9", "body": "Hello"}\n{"key": "k10"}\n')
    got = extract(doc, jsonl_text_field="body", jsonl_id_field="key")
    assert (got.text, got.note) == (
        "[k9]\nHello",
        "1 of 2 lines skipped: not JSON or no 'body' field",
    )
    assert ExtractOptions.of(None) == ExtractOptions("text", "id")
    with pytest.raises(ValueError, match="unknown extraction option 'jsonl_txt_field'"):
        extract(doc, jsonl_txt_field="body")


def test_jsonl_without_a_usable_record_is_no_text(tmp_path: Path) -> None:
    exc = error(
        write(tmp_path, "bad.jsonl", '{"title": "x"}\n[1, 2]\n{"text": "  "}\n' + "[" * 100_000)
    )
    assert exc.reason == "no_text"
    assert "none of its 4 line(s) is usable: not JSON or no 'text' field" in exc.message


# ── nasty input ───────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", ["e.txt", "e.html", "e.pdf", "e.docx", "e.jsonl"])
def test_empty_files_of_every_format_are_empty(tmp_path: Path, name: str) -> None:
    exc = error(write(tmp_path, name, b""))
    assert exc.reason == "empty" and "0 bytes" in exc.message


@pytest.mark.parametrize("name", ["z.txt", "z.md", "z.html", "z.jsonl"])
def test_gzip_under_a_text_name_is_binary_and_says_gzip(tmp_path: Path, name: str) -> None:
    exc = error(write(tmp_path, name, gzip.compress(b"hello world\n" * 100)))
    assert exc.reason == "binary" and "gzip-compressed" in exc.message


def test_binary_and_nul_bytes_in_text_formats(tmp_path: Path) -> None:
    nul = error(write(tmp_path, "n.txt", b"text then \x00 a NUL"))
    assert nul.reason == "binary" and "NUL byte at offset 10" in nul.message
    assert error(write(tmp_path, "n.html", b"<p>x</p>\x00")).reason == "binary"
    assert error(write(tmp_path, "n.jsonl", os.urandom(64) + b"\x00")).reason == "binary"
    zipped = error(write(tmp_path, "z.txt", docx_bytes()))
    assert zipped.reason == "binary" and "zip archive" in zipped.message
    assert "PDF" in error(write(tmp_path, "p.txt", pdf_bytes(["x"]))).message


def test_latin1_text_is_decoded_with_a_note(tmp_path: Path) -> None:
    data = "Grüße aus Köln, 5 £\n".encode("latin-1") + b"\x81"  # 0x81: not in cp1252
    got = extract(write(tmp_path, "de.txt", data))
    assert (got.text, got.encoding) == (data.decode("latin-1"), "latin-1")
    assert got.note == "invalid UTF-8 at byte 2: decoded as latin-1"


def test_a_30_mb_single_line_is_read_within_the_limit_and_refused_over_it(tmp_path: Path) -> None:
    doc = write(tmp_path, "line.txt", b"word " * (6 * MB))  # 30 MiB, no newline
    started = time.perf_counter()
    got = extract_text(doc, max_bytes=32 * MB)
    assert len(got.text) == 30 * MB and "\n" not in got.text
    assert time.perf_counter() - started < 10
    exc = error(doc, max_bytes=20 * MB)
    assert exc.reason == "too_large" and "31,457,280 bytes" in exc.message


def test_unicode_names_and_nested_folders_in_every_format(tmp_path: Path) -> None:
    write(tmp_path, "日本/報告/第1.pdf", pdf_bytes(["PDF text"]))
    write(tmp_path, "ü/ß/straße.html", "<p>HTML text</p>")
    write(tmp_path, "emoji 🙂/report.docx", docx_bytes())
    write(tmp_path, "a/b/c/d/records.jsonl", '{"text": "JSONL text"}\n')
    write(tmp_path, "résumé.md", "MD text")
    docs = list(discover(tmp_path, ["**"]))
    got = {d.path: extract(d).text for d in docs}
    assert list(got) == sorted(got)
    assert got["日本/報告/第1.pdf"] == "PDF text"
    assert got["ü/ß/straße.html"] == "HTML text"
    assert got["emoji 🙂/report.docx"].startswith("Quarterly report")
    assert got["a/b/c/d/records.jsonl"] == "JSONL text"
    assert got["résumé.md"] == "MD text"


# ── extract_many ──────────────────────────────────────────────────────────────────────


def crashing_extract(doc: Document, *, max_bytes: int, options: ExtractOptions) -> ExtractedText:
    """Kills its process for a "crash" file, as a segfault in a parser would; raises for a
    "boom" file. Module-level, so the worker processes can import it."""
    if "crash" in doc.path:
        os._exit(70)
    if "boom" in doc.path:
        raise RuntimeError("parser bug")
    return extract_text(doc, max_bytes=max_bytes, options=options)


def corpus(root: Path, names: list[str]) -> list[Document]:
    docs = []
    for i, name in enumerate(names):
        if name.endswith(".pdf"):
            docs.append(write(root, name, pdf_bytes([f"pdf {i}"])))
        elif name.endswith(".docx"):
            docs.append(write(root, name, docx_bytes()))
        else:
            docs.append(write(root, name, f"text {i}"))
    return docs


def summary(got: Iterator[tuple[Document, ExtractedText | DocumentError]]) -> list[tuple]:
    return [
        (d.path, r.reason if isinstance(r, DocumentError) else r.text.split("\n")[0])
        for d, r in got
    ]


def test_extract_many_keeps_input_order_across_pool_and_inline(tmp_path: Path) -> None:
    names = ["09.pdf", "01.txt", "05.docx", "02.pdf", "08.md", "03.pdf", "empty.txt", "04.pdf"]
    docs = corpus(tmp_path, names)
    write(tmp_path, "empty.txt", "")
    got = summary(extract_many(docs, max_bytes=MB, workers=2, in_flight=3))
    assert got == [
        ("09.pdf", "pdf 0"),
        ("01.txt", "text 1"),
        ("05.docx", "Quarterly report"),
        ("02.pdf", "pdf 3"),
        ("08.md", "text 4"),
        ("03.pdf", "pdf 5"),
        ("empty.txt", "empty"),
        ("04.pdf", "pdf 7"),
    ]


def test_extract_many_streams_with_bounded_documents_in_flight(tmp_path: Path) -> None:
    docs = corpus(tmp_path, [f"{i:02}.pdf" if i % 3 else f"{i:02}.txt" for i in range(12)])
    pulled = 0

    def feed() -> Iterator[Document]:
        nonlocal pulled
        for doc in docs:
            pulled += 1
            yield doc

    results = extract_many(feed(), max_bytes=MB, workers=2, in_flight=3)
    assert pulled == 0  # nothing is read before the first result is asked for
    seen = 0
    for _, got in results:
        seen += 1
        assert isinstance(got, ExtractedText), got
        assert pulled - seen <= 3, (pulled, seen)
    assert seen == pulled == 12


def test_extract_many_survives_a_document_that_kills_its_worker(tmp_path: Path) -> None:
    names = ["a.pdf", "b.pdf", "crash.pdf", "c.pdf", "boom.txt", "d.txt", "e.pdf"]
    docs = corpus(tmp_path, names)
    got = list(extract_many(docs, max_bytes=MB, workers=2, extract=crashing_extract))
    assert summary(iter(got)) == [
        ("a.pdf", "pdf 0"),
        ("b.pdf", "pdf 1"),
        ("crash.pdf", "unreadable"),
        ("c.pdf", "pdf 3"),
        ("boom.txt", "unreadable"),
        ("d.txt", "text 5"),
        ("e.pdf", "pdf 6"),
    ]
    crash, boom = got[2][1], got[4][1]
    assert isinstance(crash, DocumentError) and "process extracting it died" in crash.message
    assert isinstance(boom, DocumentError) and "RuntimeError: parser bug" in boom.message


def test_extract_many_checks_its_arguments_at_the_call() -> None:
    with pytest.raises(ValueError, match="workers"):
        extract_many([], max_bytes=MB, workers=0)
    with pytest.raises(ValueError, match="in_flight"):
        extract_many([], max_bytes=MB, workers=1, in_flight=0)
    with pytest.raises(ValueError, match="jsonl_id"):
        extract_many([], max_bytes=MB, workers=1, options={"jsonl_id": "x"})
