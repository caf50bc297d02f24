"""Documents that fault the ingest stage: a parser that never finishes, a worker whose
parent is killed, a large file that changes while it is streamed (issue 10, promise 6).

Nothing is mocked: the slow PDF is a real file that keeps pypdf busy for minutes; the
hanging extractor is a module-level function here, which the real worker processes
import (``extract_many(extract=...)``, as for the crashing extractor in
``test_ingest_formats``); a truncated file is truncated on disk between two blocks.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import pipeline.ingest.stream as stream
from pipeline.config import Config
from pipeline.corpus import read_corpus
from pipeline.ingest import DocumentError, ExtractedText, ExtractOptions, extract_many, extract_text
from pipeline.models import Chunk, Document
from pipeline.store import DocumentRow
from pipeline.tokens import CharEstimate
from tests.test_ingest_formats import corpus, summary, write

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
HANG_S = 60.0  # how long the hanging extractor sleeps: far past every timeout used here
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


# ── helpers ───────────────────────────────────────────────────────────────────────────


def slow_pdf(pages: int = 400, operators: int = 20_000) -> bytes:
    """A valid 20 KB PDF whose pages share one compressed content stream of ``operators``
    text-showing operators: pypdf parses it again for every page, about 0.3 s a page on
    a laptop, so extracting it takes minutes (bounded: it does end)."""
    content = b"BT /F1 12 Tf 72 720 Td " + b"(x) Tj 0 -1 Td " * operators + b"ET"
    packed = zlib.compress(content, 9)
    kids = " ".join(f"{5 + i} 0 R" for i in range(pages))
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 3 0 R >> >> /Contents 4 0 R >>"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream",
        *[page] * pages,
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def hanging_extract(doc: Document, *, max_bytes: int, options: ExtractOptions) -> ExtractedText:
    """For a "hang" file: write this process's pid next to the file, then hang (sleep
    ``HANG_S``). Any other file is extracted normally. Module-level, so workers import it."""
    if "hang" in doc.path:
        pid_file = doc.abs_path.with_suffix(".pid")
        pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
        pid_file.with_suffix(".tmp").replace(pid_file)  # whole, or not there
        time.sleep(HANG_S)
    return extract_text(doc, max_bytes=max_bytes, options=options)


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone while listed
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        found[int(entry.name)] = (int(ppid), state)
    return found


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    info = _procs().get(pid)
    return info is not None and info[1] != "Z"


def pool_workers() -> set[int]:
    """Live worker processes of this test process: the children of its forkserver (or,
    with spawn, its own children that run ``spawn_main``)."""
    procs = _procs()
    mine = {pid for pid, (ppid, _) in procs.items() if ppid == os.getpid()}
    servers, workers = set(), set()
    for pid in mine:
        try:
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        if b"forkserver" in cmdline:
            servers.add(pid)
        elif b"spawn_main" in cmdline:
            workers.add(pid)
    workers |= {pid for pid, (ppid, _) in procs.items() if ppid in servers}
    return {pid for pid in workers if alive(pid)}


def wait_for(check, *, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.05)


def config(root: Path, tmp_path: Path, **corpus_fields: object) -> Config:
    return Config.model_validate(
        {
            "corpus": {"path": str(root), "residency_default": ["eu"], **corpus_fields},
            "task": {"schema": "chunk_summary"},
            "chunking": {"max_tokens": 200, "overlap_tokens": 10, "counter": "chars/4"},
            "budget": {"run_usd": 1},
            "providers": [
                {"name": "p", "kind": "openai", "region": "eu", "models": [{"id": "gpt-4.1-mini"}]}
            ],
            "output": {"root": str(tmp_path / "out")},
        }
    )


def rows_of(items: list[Chunk | DocumentRow]) -> dict[str, DocumentRow]:
    return {i.path: i for i in items if isinstance(i, DocumentRow)}


# ── a parser that does not finish ─────────────────────────────────────────────────────


def test_the_timeout_is_a_corpus_setting_with_a_default() -> None:
    cfg = config(Path("corpus"), Path("out"))
    assert cfg.corpus.extract_timeout_s == 120.0
    with pytest.raises(ValueError, match="extract_timeout_s"):
        config(Path("corpus"), Path("out"), extract_timeout_s=0)


@linux_only
def test_a_pdf_that_keeps_its_parser_busy_gets_a_timeout_row_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    root = tmp_path / "corpus"
    corpus(root, ["a.pdf", "b.docx", "c.txt", "e.pdf", "f.pdf"])
    write(root, "d-slow.pdf", slow_pdf())
    cfg = config(root, tmp_path, extract_timeout_s=2, extract_workers=2)
    items = list(read_corpus(cfg, run_id="r1", counter=CharEstimate(), announce=False))
    rows = rows_of(items)
    assert list(rows) == ["a.pdf", "b.docx", "c.txt", "d-slow.pdf", "e.pdf", "f.pdf"]
    slow = rows["d-slow.pdf"]
    assert (slow.status, slow.reason, slow.chunks) == ("error", "timeout", 0)
    assert slow.message is not None
    assert "d-slow.pdf" in slow.message and "2 s" in slow.message
    assert "corpus.extract_timeout_s" in slow.message
    others = [row for path, row in rows.items() if path != "d-slow.pdf"]
    assert all(row.status == "ok" and row.chunks >= 1 for row in others), others
    assert pool_workers() == set()  # the killed worker, and all the others, are gone


@linux_only
def test_the_worker_stuck_on_a_document_is_killed_at_the_timeout_and_replaced(
    tmp_path: Path,
) -> None:
    docs = corpus(tmp_path, ["a.pdf", "b-hang.pdf", "c.pdf", "d.txt", "e.docx", "f.pdf"])
    got = []
    # one worker: the documents after the hanging one can only come from its replacement
    for doc, result in extract_many(
        docs, max_bytes=MB, workers=1, timeout_s=2, extract=hanging_extract
    ):
        if doc.path == "b-hang.pdf":
            stuck = int((tmp_path / "b-hang.pid").read_text())
            assert not alive(stuck), "the worker stuck on b-hang.pdf still runs"
        got.append((doc, result))
    assert summary(iter(got)) == [
        ("a.pdf", "pdf 0"),
        ("b-hang.pdf", "timeout"),
        ("c.pdf", "pdf 2"),
        ("d.txt", "text 3"),
        ("e.docx", "Quarterly report"),
        ("f.pdf", "pdf 5"),
    ]
    hung = got[1][1]
    assert isinstance(hung, DocumentError)
    assert "b-hang.pdf" in hung.message and "after 2 s" in hung.message
    assert pool_workers() == set()


@linux_only
def test_closing_the_stream_early_kills_a_busy_worker(tmp_path: Path) -> None:
    docs = corpus(tmp_path, ["a.pdf", "b-hang.pdf", "c.pdf"])
    results = extract_many(docs, max_bytes=MB, workers=2, timeout_s=None, extract=hanging_extract)
    first_doc, _ = next(results)
    assert first_doc.path == "a.pdf"
    wait_for((tmp_path / "b-hang.pid").exists, seconds=30, what="the hanging worker started")
    stuck = int((tmp_path / "b-hang.pid").read_text())
    results.close()  # e.g. a run stopped by its caller: no parser is left behind
    assert not alive(stuck)
    assert pool_workers() == set()


_PARENT = """
import sys
from pathlib import Path
from pipeline.ingest import extract_many
from pipeline.models import Document
from tests.test_ingest_faults import hanging_extract

root = Path(sys.argv[1])
docs = [Document.at(root, p, p.stat().st_size) for p in sorted(root.glob("*.pdf"))]
for doc, got in extract_many(docs, max_bytes=1 << 20, workers=1, timeout_s=None,
                             extract=hanging_extract):
    print(doc.path, flush=True)
"""


@linux_only
def test_a_worker_dies_with_its_parent_even_mid_parse(tmp_path: Path) -> None:
    corpus(tmp_path, ["a.pdf", "b-hang.pdf"])
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT), str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    pid_file = tmp_path / "b-hang.pid"
    stuck = None
    try:
        wait_for(pid_file.exists, seconds=60, what="the worker took the hanging document")
        stuck = int(pid_file.read_text())
        assert alive(stuck)
        parent.send_signal(signal.SIGKILL)  # kill -9: no cleanup code of the parent runs
        parent.wait(timeout=10)
        wait_for(lambda: not alive(stuck), seconds=15, what="the orphaned worker exited")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if stuck is not None and alive(stuck):
            os.kill(stuck, signal.SIGKILL)  # old code: do not leave it sleeping


# ── a large file that changes while it is streamed ────────────────────────────────────

CLAUSE = (
    "## Clause {i}\n\nThe supplier — Nordhafen AG, Zürich office — delivers within 30 days. "
    "Fees are €{i},000 per quarter; late payment accrues 4 % interest.\n\n"
)


def _large(path: Path, n: int = 3000) -> str:
    text = "".join(CLAUSE.format(i=i) for i in range(n))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text


def _read_truncating(cfg: Config, victim: str, keep_bytes: int) -> Iterator[Chunk | DocumentRow]:
    """The run's items; right after ``victim``'s first chunk, the file is cut on disk."""
    cut = False
    for item in read_corpus(cfg, run_id="r1", counter=CharEstimate(), announce=False):
        yield item
        if not cut and isinstance(item, Chunk) and item.path == victim:
            os.truncate(cfg.corpus.path / victim, keep_bytes)
            cut = True
    assert cut, f"{victim} was never chunked"


def test_a_file_truncated_while_streamed_gets_an_error_row_and_the_next_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "STREAM_ABOVE_BYTES", 50_000)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 4096)  # many blocks: the cut falls between two
    root = tmp_path / "corpus"
    first = _large(root / "a-large.txt")
    second = _large(root / "b-large.txt")
    (root / "c-small.md").write_text("# Small\n\nA short note.\n")
    size = (root / "a-large.txt").stat().st_size
    cfg = config(root, tmp_path)
    keep = size * 3 // 4 + 1  # past what the chunker reads ahead of its first chunk
    items = list(_read_truncating(cfg, "a-large.txt", keep_bytes=keep))
    rows = rows_of(items)
    cut = rows["a-large.txt"]
    assert (cut.status, cut.reason) == ("error", "unreadable")
    assert cut.message is not None and "changed while it was being read" in cut.message
    assert f"ended after {keep:,} of its {size:,} bytes" in cut.message
    kept = [i for i in items if isinstance(i, Chunk) and i.path == "a-large.txt"]
    assert cut.chunks == len(kept) >= 1  # what was passed on is counted, and said
    assert f"the {len(kept)} chunk(s) before character {kept[-1].char_end:,}" in cut.message
    assert all(first[c.char_start : c.char_end] == c.text for c in kept)
    left = first.encode("utf-8")[:keep].decode("utf-8", errors="ignore")
    assert kept[-1].char_end < len(left)  # no chunk ends where the cut file did, as if whole
    assert (rows["b-large.txt"].status, rows["c-small.md"].status) == ("ok", "ok")
    second_chunks = [i for i in items if isinstance(i, Chunk) and i.path == "b-large.txt"]
    assert second_chunks[-1].char_end == len(second.rstrip())  # read to its end


# ── workers that cannot start ─────────────────────────────────────────────────────────


def test_an_extractor_workers_cannot_import_fails_each_document_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module holding ``extract`` is gone by the time the workers start: each one
    dies starting; each pooled document gets an error (no endless restarts), text files
    are still read inline."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "vanishing_extractor.py").write_text(
        "from pipeline.ingest import extract_text\n"
        "def extract(doc, *, max_bytes, options):\n"
        "    return extract_text(doc, max_bytes=max_bytes, options=options)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    import vanishing_extractor  # type: ignore[import-not-found]

    (tmp_path / "lib" / "vanishing_extractor.py").unlink()
    monkeypatch.setitem(sys.modules, "vanishing_extractor", vanishing_extractor)  # undone after
    docs = corpus(tmp_path / "corpus", ["a.pdf", "b.txt", "c.docx"])
    got = list(extract_many(docs, max_bytes=MB, workers=2, extract=vanishing_extractor.extract))
    assert summary(iter(got)) == [
        ("a.pdf", "unreadable"),
        ("b.txt", "text 1"),
        ("c.docx", "unreadable"),
    ]
    errors = [r.message for _, r in got if isinstance(r, DocumentError)]
    assert all("died while starting" in m for m in errors), errors
    assert pool_workers() == set()


def test_an_extractor_that_does_not_pickle_fails_each_pooled_document(tmp_path: Path) -> None:
    def local(doc: Document, *, max_bytes: int, options: ExtractOptions) -> ExtractedText:
        # inline (b.txt) it runs; a local function cannot be sent to a worker (the PDFs)
        return extract_text(doc, max_bytes=max_bytes, options=options)

    docs = corpus(tmp_path, ["a.pdf", "b.txt", "c.pdf"])
    got = list(extract_many(docs, max_bytes=MB, workers=1, extract=local))
    assert summary(iter(got)) == [
        ("a.pdf", "unreadable"),
        ("b.txt", "text 1"),
        ("c.pdf", "unreadable"),
    ]
    errors = [r.message for _, r in got if isinstance(r, DocumentError)]
    assert all("could not run it" in m and "pickle" in m for m in errors), errors
