"""Ingest benchmark: docroute's reading of a mixed corpus today, and candidate extractors.

    .venv/bin/python bench/ingest.py --peers-python /tmp/ingest-peers/bin/python
    .venv/bin/python bench/ingest.py --budget 20          # candidates "not measured"

The peers' virtualenv needs ``pypdfium2 lxml`` and must not be the project's::

    python3 -m venv /tmp/ingest-peers && /tmp/ingest-peers/bin/pip install pypdfium2 lxml

Builds, in a temporary folder, a deterministic corpus of about 20 MB and 290 files from
English text on this machine (gathered as ``bench/chunking.py`` does: licences, copyright
files, Python docstrings, man pages): .txt, .md, .html, .jsonl (25 records a file), 40
PDFs (reportlab; half in Helvetica, half in an embedded DejaVu Sans when it is installed)
and 40 .docx (python-docx: headings, paragraphs, one table). Then, each in a subprocess of
its own (a fresh interpreter, its own caches), it measures and prints one JSON object:

- ``end_to_end``: ``pipeline.corpus.read_corpus`` over the corpus, as ``docroute plan``
  calls it, with ``examples/docroute.yaml`` pointed at it (counter: ``chunking.counter``'s
  default, tiktoken when its files are installed): seconds, MB/s, documents, chunks;
- ``extraction``: per format, today's extractor (``pipeline.ingest.EXTRACTORS``: pypdf,
  python-docx, …) on each file's bytes in one process, i.e. MB/s per core, over the
  files' bytes and over the text they give; for PDF and docx, next to the candidates
  (pypdfium2's text per page; ``word/document.xml`` streamed with lxml's ``iterparse``),
  run by ``--peers-python``, with the ratio of the two;
- ``parity``: how the candidates' text compares with today's: per PDF the page count and
  a difflib ratio on a sample of pages, whether pages start alike; per docx whether the
  paragraphs come in the same order (figures, never asserts);
- ``chunking``: token-mode ``chunk_document`` MB/s (median of three passes, each with a
  fresh counter) on French and German text and its English originals: the man pages of
  ``/usr/share/man/{fr,de}`` (po4a translations, roff stripped) and the messages of the
  gettext catalogs in ``/usr/share/locale/{fr,de}/LC_MESSAGES`` (``man-en`` and
  ``messages-en`` are the originals of the French ones);
- ``startup``: seconds to ``import pipeline.run`` in a fresh interpreter, and what the
  heaviest packages cost of it (``-X importtime``).

An extraction measurement stops taking new files after ``--budget`` seconds (a slow
extractor reports what it did, ``files`` of ``of``); every measurement's subprocess is
killed at ``--budget`` plus two minutes and reported as a timeout. The
machine's load average is in the output: another job on the CPU shows there first.
"""

from __future__ import annotations

import argparse
import difflib
import html
import io
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "docroute.yaml"
SEED = 16
#: format → (files, target text KB per file); about 20 MB of files in all.
PLAN = {"txt": (70, 90), "md": (60, 70), "html": (60, 60), "jsonl": (20, 75),
        "pdf": (40, 60), "docx": (40, 50)}  # fmt: skip
JSONL_RECORDS = 25
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_PDF_FONTS = "Helvetica (even files), DejaVu Sans embedded (odd files)"
HEAVY = ("anthropic", "openai", "mistralai", "httpx2", "aiohttp", "uvicorn", "pydantic", "numpy",
         "duckdb", "pyarrow", "pypdf", "docx", "lxml", "tiktoken", "selectolax", "pebble",
         "yaml", "jsonschema")  # fmt: skip
W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"

# ── the corpus ────────────────────────────────────────────────────────────────────────

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")


def _english() -> Iterator[str]:
    """Paragraphs of English, in a fixed order: ``bench/chunking.py``'s sources."""
    sys.path.insert(0, str(REPO))
    from bench.chunking import _docstrings, _man_pages, _plain_files

    for sources in (_plain_files(), _docstrings(), _man_pages()):
        for _name, text in sources:
            for paragraph in re.split(r"\n\s*\n", _CONTROL.sub("", text)):
                if len(paragraph.strip()) >= 40:
                    yield paragraph.strip("\n")


def _documents(paragraphs: Iterator[str]) -> Iterator[tuple[str, str, list[str]]]:
    """(format, title, paragraphs) of every file of ``PLAN``, sizes varied by a seeded
    generator, formats interleaved so each one gets every kind of source."""
    rng = random.Random(SEED)
    order = [fmt for fmt, (count, _kb) in PLAN.items() for _ in range(count)]
    rng.shuffle(order)
    for number, fmt in enumerate(order):
        target, taken, size = PLAN[fmt][1] * 1000 * (0.5 + rng.random()), [], 0
        while size < target:
            paragraph = next(paragraphs, None)
            if paragraph is None:
                raise SystemExit(f"not enough English text on this machine for {fmt} {number}")
            taken.append(paragraph)
            size += len(paragraph) + 2
        yield fmt, f"Document {number:03d}: {_flat(taken[0])[:60]}", taken


def build_corpus(root: Path) -> dict[str, Any]:
    """Write the corpus under ``root``; what was written, per format."""
    root.mkdir(parents=True)
    writers: dict[str, Callable[[Path, str, list[str]], None]] = {
        "txt": _write_txt, "md": _write_md, "html": _write_html, "jsonl": _write_jsonl,
        "pdf": _write_pdf, "docx": _write_docx,
    }  # fmt: skip
    made: dict[str, dict[str, float]] = {fmt: {"files": 0, "mb": 0.0} for fmt in PLAN}
    for number, (fmt, title, paragraphs) in enumerate(_documents(_english())):
        path = root / fmt / f"{number:03d}.{fmt}"
        path.parent.mkdir(exist_ok=True)
        writers[fmt](path, title, paragraphs)
        made[fmt]["files"] += 1
        made[fmt]["mb"] += path.stat().st_size / 1e6
    return {fmt: {"files": m["files"], "mb": round(m["mb"], 2)} for fmt, m in made.items()}


def _flat(paragraph: str) -> str:
    """A paragraph reflowed to one line, as a word processor holds it."""
    return _SPACES.sub(" ", paragraph).strip()


def _write_txt(path: Path, title: str, paragraphs: list[str]) -> None:
    path.write_text(title + "\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")


def _write_md(path: Path, title: str, paragraphs: list[str]) -> None:
    parts = [f"# {title}"]
    for n, paragraph in enumerate(paragraphs):
        if n % 8 == 7:
            parts.append(f"## Section {n // 8 + 1}")
        parts.append(paragraph)
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")


def _write_html(path: Path, title: str, paragraphs: list[str]) -> None:
    body = "\n".join(f"<p>{html.escape(_flat(p))}</p>" for p in paragraphs)
    page = (
        f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        "</title><style>body{font:14px sans-serif}</style><script>var x=1;</script></head>"
        "<body><nav><a href=/>Home</a> <a href=/docs>Docs</a></nav>"
        f"<main><h1>{html.escape(title)}</h1>\n{body}\n</main>"
        "<footer>Built by bench/ingest.py</footer></body></html>\n"
    )
    path.write_text(page, encoding="utf-8")


def _write_jsonl(path: Path, title: str, paragraphs: list[str]) -> None:
    per = max(1, len(paragraphs) // JSONL_RECORDS)
    with open(path, "w", encoding="utf-8") as out:
        for n in range(0, len(paragraphs), per):
            text = "\n\n".join(paragraphs[n : n + per])
            out.write(json.dumps({"id": f"r{n // per}", "title": title, "text": text}) + "\n")


def _write_pdf(path: Path, title: str, paragraphs: list[str]) -> None:
    """A4 pages of 10-point text, 64 lines a page, even files in Helvetica (WinAnsi
    only), odd ones in DejaVu Sans embedded as a subset, as most real PDFs have it."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    font = "Helvetica"
    if int(path.stem) % 2 and FONT.exists():
        if "DejaVuSans" not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(TTFont("DejaVuSans", str(FONT)))
        font = "DejaVuSans"
    lines = [title, ""]
    for paragraph in paragraphs:
        flat = _flat(paragraph)
        if font == "Helvetica":
            flat = flat.encode("cp1252", "replace").decode("cp1252")
        lines += [*textwrap.wrap(flat, 95), ""]
    page = canvas.Canvas(str(path), pagesize=A4, pageCompression=1, invariant=1)
    for start in range(0, len(lines), 64):
        text = page.beginText(50, A4[1] - 50)
        text.setFont(font, 10)
        for line in lines[start : start + 64]:
            text.textLine(line)
        page.drawText(text)
        page.showPage()
    page.save()


def _write_docx(path: Path, title: str, paragraphs: list[str]) -> None:
    """A title, a heading every eight paragraphs, and a small table after the first."""
    import docx

    document = docx.Document()
    document.add_heading(title, 0)
    for n, paragraph in enumerate(paragraphs):
        if n % 8 == 7:
            document.add_heading(f"Section {n // 8 + 1}", 1)
        document.add_paragraph(_flat(paragraph))
        if n == 0:
            table = document.add_table(rows=3, cols=3)
            for r, row in enumerate(table.rows):
                for c, cell in enumerate(row.cells):
                    cell.text = f"cell {r}.{c}"
    document.save(str(path))


def _man_text(path: Path) -> str:
    """A gzipped man page's text, its roff stripped as ``bench/chunking.py`` does."""
    import gzip

    sys.path.insert(0, str(REPO))
    from bench.chunking import _ROFF_ESCAPE, _ROFF_REQUEST

    raw = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    return _ROFF_ESCAPE.sub("", _ROFF_REQUEST.sub("", raw)).replace("\\-", "-")


def _man_pages(lang: str) -> tuple[str, str]:
    """The man pages translated into ``lang``, and the English originals of the same
    pages where this machine has them, so the languages compare on the same content."""
    pages = sorted(Path(f"/usr/share/man/{lang}").glob("man*/*.gz"))
    originals = [Path("/usr/share/man") / p.parent.name / p.name for p in pages]
    english = "\n\n".join(_man_text(p) for p in originals if p.exists())
    return "\n\n".join(_man_text(p) for p in pages), english


def _messages(lang: str) -> tuple[str, str]:
    """Every translated message of ``lang``'s gettext catalogs (``.mo``), one paragraph
    each, and their English originals (the catalogs' msgids)."""
    translated, english = [], []
    for path in sorted(Path(f"/usr/share/locale/{lang}/LC_MESSAGES").glob("*.mo")):
        for original, translation in _mo_pairs(path.read_bytes()):
            english.append(original)
            translated.append(translation)
    return "\n\n".join(translated), "\n\n".join(english)


def _mo_pairs(data: bytes) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) of a GNU ``.mo`` file, plural forms joined by a space; the header
    (empty msgid) and a file that is not a little- or big-endian catalog are skipped."""
    import struct

    order = {b"\xde\x12\x04\x95": "<", b"\x95\x04\x12\xde": ">"}.get(data[:4])
    if order is None:
        return
    count, originals, translations = struct.unpack_from(order + "3I", data, 8)
    for n in range(count):
        pair = []
        for table in (originals, translations):
            length, offset = struct.unpack_from(order + "2I", data, table + 8 * n)
            pair.append(data[offset : offset + length].decode("utf-8", "replace"))
        if pair[0] and pair[1].strip():
            yield pair[0].replace("\0", " "), pair[1].replace("\0", " ")


SAMPLES: dict[str, tuple[Callable[[str], tuple[str, str]], str]] = {
    "man": (_man_pages, "/usr/share/man/{lang}/man*/*.gz (po4a translations, roff stripped)"),
    "messages": (_messages, "/usr/share/locale/{lang}/LC_MESSAGES/*.mo (gettext msgstr)"),
}


def build_languages(folder: Path) -> dict[str, Any]:
    """``<kind>-<lang>.txt`` for each sample kind and language this machine has text in;
    the English of a kind is the originals of its French text."""
    folder.mkdir()
    found: dict[str, Any] = {}
    for kind, (read, where) in SAMPLES.items():
        for lang in ("fr", "de"):
            translated, english = read(lang)
            if not translated.strip():
                found[f"{kind}-{lang}"] = {"source": None, "note": f"nothing at {where}"}
                continue
            found[f"{kind}-{lang}"] = {"source": where.format(lang=lang)}
            (folder / f"{kind}-{lang}.txt").write_text(translated, encoding="utf-8")
            if lang == "fr":
                found[f"{kind}-en"] = {"source": f"the originals of {kind}-fr"}
                (folder / f"{kind}-en.txt").write_text(english, encoding="utf-8")
    return found


# ── workers: each runs in a subprocess of its own ─────────────────────────────────────


def _cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def work_end_to_end(corpus: str, output: str) -> dict[str, Any]:
    """``read_corpus`` as ``make_plan`` calls it, over the whole corpus."""
    sys.path.insert(0, str(REPO))
    from pipeline.config import load_config
    from pipeline.corpus import read_corpus
    from pipeline.models import Chunk
    from pipeline.tokens import get_counter

    overrides = {"corpus.path": corpus, "corpus.residency_manifest": None, "output.root": output}
    cfg = load_config(CONFIG, overrides=overrides)
    began, cpu = time.perf_counter(), _cpu_s()
    counter = get_counter(cfg.chunking.counter)
    rows = chunks = errors = 0
    for item in read_corpus(cfg, run_id="bench", counter=counter, announce=False):
        if isinstance(item, Chunk):
            chunks += 1
        else:
            rows += 1
            errors += item.status == "error"
    seconds = time.perf_counter() - began
    mb = sum(p.stat().st_size for p in Path(corpus).rglob("*") if p.is_file()) / 1e6
    return {
        "mb": round(mb, 2), "seconds": round(seconds, 2), "mb_per_s": round(mb / seconds, 2),
        "document_rows": rows, "error_rows": errors, "chunks": chunks,
        "counter": counter.name, "max_tokens": cfg.chunking.max_tokens,
        "overlap_tokens": cfg.chunking.overlap_tokens,
        "extract_workers": cfg.corpus.extract_workers,
        "main_process_cpu_s": round(_cpu_s() - cpu, 2),
        "worker_processes_cpu_s": round(_cpu_s(resource.RUSAGE_CHILDREN), 2),
    }  # fmt: skip


def work_today(fmt: str, corpus: str, dump: str, budget: str) -> dict[str, Any]:
    """Today's extractor for ``fmt`` on each file's bytes, one file after another."""
    sys.path.insert(0, str(REPO))
    from pipeline.ingest import EXTRACTORS, ExtractOptions
    from pipeline.models import Document

    root, extract, options = Path(corpus), EXTRACTORS[f".{fmt}"], ExtractOptions()
    texts: dict[str, Any] = {}

    def one(path: Path, data: bytes) -> int:
        doc = Document.at(root, path, len(data))
        got = extract(doc, data, options)
        if fmt == "pdf":
            ends = [*got.page_starts[1:], len(got.text) + 2]
            pages = [got.text[a : b - 2] for a, b in zip(got.page_starts, ends, strict=True)]
            texts[path.name] = pages
        elif fmt == "docx":
            texts[path.name] = got.text
        return len(got.text.encode())

    result = _timed(sorted((root / fmt).glob(f"*.{fmt}")), one, float(budget))
    Path(dump).write_text(json.dumps(texts))
    return {"library": _today_library(fmt), **result}


def _today_library(fmt: str) -> str:
    from importlib.metadata import version

    dist = {"pdf": "pypdf", "docx": "python-docx", "html": "selectolax"}.get(fmt)
    return f"{dist} {version(dist)}" if dist else "docroute (stdlib)"


def work_candidates(fmt: str, corpus: str, dump: str, budget: str) -> dict[str, Any]:
    """The candidate for ``fmt`` (the peers' venv): pypdfium2, or lxml's iterparse."""
    from importlib.metadata import version

    texts: dict[str, Any] = {}
    extract = _pdfium_pages if fmt == "pdf" else _docx_paragraphs

    def one(path: Path, data: bytes) -> int:
        got = extract(data)
        texts[path.name] = got
        return sum(len(t.encode()) for t in got)

    result = _timed(sorted(Path(corpus, fmt).glob(f"*.{fmt}")), one, float(budget))
    Path(dump).write_text(json.dumps(texts))
    library = "pypdfium2" if fmt == "pdf" else "lxml"
    return {"library": f"{library} {version(library)}", **result}


def _pdfium_pages(data: bytes) -> list[str]:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(data)
    try:
        pages = []
        for number in range(len(pdf)):
            page = pdf[number]
            textpage = page.get_textpage()
            pages.append(textpage.get_text_range().strip())
            textpage.close()
            page.close()
        return pages
    finally:
        pdf.close()


def _docx_paragraphs(data: bytes) -> list[str]:
    """Every non-empty paragraph of the body (table cells' too), in order, its runs'
    text with tabs and breaks as python-docx renders them."""
    from lxml import etree

    paragraphs = []
    with zipfile.ZipFile(io.BytesIO(data)) as package, package.open("word/document.xml") as f:
        for _event, element in etree.iterparse(f, events=("end",), tag=f"{W}p"):
            parts = []
            for node in element.iter(f"{W}t", f"{W}tab", f"{W}br", f"{W}cr"):
                parts.append((node.text or "") if node.tag == f"{W}t" else _MARKS[node.tag])
            text = "".join(parts).strip()
            if text:
                paragraphs.append(text)
            element.clear(keep_tail=True)
    return paragraphs


_MARKS = {f"{W}tab": "\t", f"{W}br": "\n", f"{W}cr": "\n"}


def _timed(paths: list[Path], one: Callable[[Path, bytes], int], budget: float) -> dict[str, Any]:
    """Run ``one`` on each file's bytes (read before the clock runs) until ``budget``,
    after one untimed run on the smallest file (imports, first-call set-up)."""
    if paths:
        smallest = min(paths, key=lambda p: p.stat().st_size)
        one(smallest, smallest.read_bytes())
    began, wall, cpu, files, in_bytes, text_bytes = time.perf_counter(), 0.0, 0.0, 0, 0, 0
    for path in paths:
        data = path.read_bytes()
        inside, inside_cpu = time.perf_counter(), time.process_time()
        text_bytes += one(path, data)
        wall += time.perf_counter() - inside
        cpu += time.process_time() - inside_cpu
        files, in_bytes = files + 1, in_bytes + len(data)
        if time.perf_counter() - began > budget:
            break
    return {
        "files": files, "of": len(paths), "file_mb": round(in_bytes / 1e6, 2),
        "text_mb": round(text_bytes / 1e6, 2), "seconds": round(wall, 3),
        "cpu_s": round(cpu, 3), "file_mb_per_s": round(in_bytes / 1e6 / wall, 2),
        "text_mb_per_s": round(text_bytes / 1e6 / wall, 2),
    }  # fmt: skip


def work_chunking(sample: str, source: str) -> dict[str, Any]:
    """Token-mode ``chunk_document`` (the counter ``read_corpus`` gets) on one sample,
    three times, each with a fresh counter (a counter remembers the words it has seen)."""
    sys.path.insert(0, str(REPO))
    from pipeline.chunking import chunk_document
    from pipeline.config import load_config
    from pipeline.models import Document
    from pipeline.tokens import get_counter

    cfg = load_config(CONFIG, overrides={"corpus.residency_manifest": None})
    text = Path(source).read_text(encoding="utf-8")
    doc = Document.at(Path(source).parent, Path(source), len(text.encode()))
    size, overlap = cfg.chunking.max_tokens, cfg.chunking.overlap_tokens
    rates, chunks, name = [], 0, ""
    for _ in range(3):
        counter = get_counter(cfg.chunking.counter)
        began, name = time.perf_counter(), counter.name
        spans = chunk_document(
            doc, text, max_tokens=size, overlap_tokens=overlap, counter=counter, regions=(),
            residency_rule="-",
        )  # fmt: skip
        chunks = sum(1 for _ in spans)
        rates.append(doc.size_bytes / 1e6 / (time.perf_counter() - began))
    non_ascii = sum(1 for c in text if ord(c) > 127)
    return {
        "sample": sample, "mb": round(doc.size_bytes / 1e6, 2),
        "non_ascii_per_1000_chars": round(1000 * non_ascii / max(1, len(text)), 1),
        "mb_per_s": round(statistics.median(rates), 2),
        "mb_per_s_runs": [round(r, 2) for r in rates], "chunks": chunks, "counter": name,
        "max_tokens": size, "overlap_tokens": overlap,
    }  # fmt: skip


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "end_to_end": work_end_to_end,
    "today": work_today,
    "candidates": work_candidates,
    "chunking": work_chunking,
}


# ── parity of the candidates' text with today's ───────────────────────────────────────


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def pdf_parity(today: dict[str, list[str]], candidate: dict[str, list[str]]) -> dict[str, Any]:
    """Page counts, page starts (first 40 characters, whitespace folded), a difflib ratio
    over up to 3 pages a file (2,000 characters each) and the character-count ratio."""
    same_pages, starts, pages, ratios, lengths = 0, 0, 0, [], []
    for name, ours in today.items():
        theirs = candidate.get(name)
        if theirs is None:
            continue
        same_pages += len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=False):
            pages += 1
            starts += _norm(a)[:40] == _norm(b)[:40]
        for a, b in list(zip(ours, theirs, strict=False))[:3]:
            ratios.append(difflib.SequenceMatcher(None, _norm(a)[:2000], _norm(b)[:2000]).ratio())
        ours_chars = sum(len(_norm(p)) for p in ours)
        lengths.append(sum(len(_norm(p)) for p in theirs) / max(1, ours_chars))
    compared = sum(1 for name in today if name in candidate)
    return {
        "files": compared, "same_page_count": same_pages,
        "pages_starting_alike": f"{starts}/{pages}",
        "similarity_min": round(min(ratios, default=0), 4),
        "similarity_median": round(statistics.median(ratios or [0]), 4),
        "char_count_ratio_min": round(min(lengths, default=0), 4),
        "char_count_ratio_max": round(max(lengths, default=0), 4),
    }  # fmt: skip


def docx_parity(today: dict[str, str], candidate: dict[str, list[str]]) -> dict[str, Any]:
    """Whether the candidate's paragraphs are today's, in today's order (today's table
    rows are tab-joined cells; each cell is a paragraph of the candidate's)."""
    same, ratios = 0, []
    for name, text in today.items():
        if name not in candidate:
            continue
        ours = [cell.strip() for line in text.splitlines() if line.strip()
                for cell in line.split("\t") if cell.strip()]  # fmt: skip
        theirs = candidate[name]
        same += ours == theirs
        ratios.append(difflib.SequenceMatcher(None, ours, theirs, autojunk=False).ratio())
    return {
        "files": len(ratios),
        "same_paragraphs_in_same_order": same,
        "sequence_ratio_min": round(min(ratios, default=0), 4),
    }


# ── start-up ──────────────────────────────────────────────────────────────────────────


def startup(runs: int = 3) -> dict[str, Any]:
    """Seconds to ``import pipeline.run`` in fresh interpreters (median of ``runs``), then
    one more run under ``-X importtime`` for what the heaviest packages cost of it."""
    code = (
        "import time; t = time.perf_counter(); import pipeline.run; print(time.perf_counter() - t)"
    )
    imports, processes = [], []
    for _ in range(runs):
        began = time.perf_counter()
        done = _python("-c", code)
        processes.append(time.perf_counter() - began)
        imports.append(float(done.stdout.strip()))
    heavy: dict[str, float] = {}
    for line in _python("-X", "importtime", "-c", code).stderr.splitlines():
        parts = line.split("|")  # "import time: self | cumulative | <indent>name"
        name = parts[-1].strip()
        if len(parts) == 3 and name in HEAVY and name not in heavy:
            heavy[name] = round(int(parts[1]) / 1e6, 2)
    return {
        "import_pipeline_run_s": round(statistics.median(imports), 2),
        "process_s": round(statistics.median(processes), 2),
        "runs": [round(s, 2) for s in imports],
        "importtime_cumulative_s": dict(sorted(heavy.items(), key=lambda kv: -kv[1])),
        "not_imported": [name for name in HEAVY if name not in heavy],
    }


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, *args]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )


# ── the driver ────────────────────────────────────────────────────────────────────────


def run_worker(python: str, args: list[str], timeout: float) -> dict[str, Any]:
    command = [python, __file__, "--worker", *args]
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(REPO / ".tokenizers")}  # no downloads
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"worker": args[0], "timeout_s": timeout}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return {"worker": args[0], "error": tail[0]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers-python", help="a venv's python with pypdfium2 and lxml")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per measurement")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, *rest = args.worker
        print(json.dumps(WORKERS[name](*rest)))
        return
    with tempfile.TemporaryDirectory(prefix="docroute-ingest-bench-") as tmp:
        print(json.dumps(_bench(Path(tmp), args), indent=1))


def _bench(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    corpus, timeout = tmp / "corpus", args.budget + 120
    made = build_corpus(corpus)
    languages = build_languages(tmp / "languages")
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "corpus": {"files": sum(m["files"] for m in made.values()),
                   "mb": round(sum(m["mb"] for m in made.values()), 2), "per_format": made,
                   "jsonl_records_per_file": JSONL_RECORDS,
                   "pdf_fonts": _PDF_FONTS if FONT.exists() else "Helvetica",
                   "built_s": round(time.perf_counter() - began, 1)},
    }  # fmt: skip
    e2e = ["end_to_end", str(corpus), str(tmp / "output")]
    report["end_to_end"] = run_worker(sys.executable, e2e, timeout)
    report["extraction"] = _extraction(tmp, corpus, args, timeout)
    report["parity"] = _parity(tmp) if args.peers_python else "not measured"
    report["chunking"] = _chunking(tmp / "languages", languages, timeout)
    report["startup"] = startup()
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.perf_counter() - began, 1)
    return report


def _extraction(
    tmp: Path, corpus: Path, args: argparse.Namespace, timeout: float
) -> dict[str, Any]:
    """Per format: today's extractor, and for PDF and docx the candidate beside it."""
    out: dict[str, Any] = {}
    for fmt in PLAN:
        today = ["today", fmt, str(corpus), str(tmp / f"today-{fmt}.json"), str(args.budget)]
        out[fmt] = {"today": run_worker(sys.executable, today, timeout)}
        if fmt not in ("pdf", "docx"):
            continue
        if not args.peers_python:
            out[fmt]["candidate"] = "not measured (no --peers-python)"
            continue
        theirs = ["candidates", fmt, str(corpus), str(tmp / f"peer-{fmt}.json"), str(args.budget)]
        out[fmt]["candidate"] = got = run_worker(args.peers_python, theirs, timeout)
        mine = out[fmt]["today"]
        if "file_mb_per_s" in got and "file_mb_per_s" in mine:
            out[fmt]["candidate_speedup"] = round(got["file_mb_per_s"] / mine["file_mb_per_s"], 1)
    return out


def _parity(tmp: Path) -> dict[str, Any]:
    def load(name: str) -> Any:
        path = tmp / name
        return json.loads(path.read_text()) if path.exists() else {}

    return {
        "pdf": pdf_parity(load("today-pdf.json"), load("peer-pdf.json")),
        "docx": docx_parity(load("today-docx.json"), load("peer-docx.json")),
    }


def _chunking(folder: Path, samples: dict[str, Any], timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sample, found in samples.items():
        source = folder / f"{sample}.txt"
        if not source.exists():
            out[sample] = {**found, "mb_per_s": "not measured"}
            continue
        got = run_worker(sys.executable, ["chunking", sample, str(source)], timeout)
        out[sample] = {**got, "source": found["source"]}
    return out


if __name__ == "__main__":
    main()
