"""Large plain-text documents are streamed: the same chunks as read whole, in flat memory."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

import pipeline.ingest.stream as stream
from pipeline.chunking import chunk_document, chunk_stream
from pipeline.endpoints import Connections
from pipeline.ingest import DocumentError, extract_text
from pipeline.models import Document
from pipeline.opening import Opening
from pipeline.run import Run
from pipeline.store import DocumentRow
from pipeline.tokens import CharEstimate
from tests.test_ingest_faults import config

TEXT = (
    "## Clause {i}\n\nThe supplier — Nordhafen AG, Zürich office — delivers within 30 days. "
    "Fees are €{i},000 per quarter; late payment accrues 4 % interest.\n\n"
)


def _doc(path: Path) -> Document:
    return Document.at(path.parent, path, path.stat().st_size)


def _write(path: Path, n: int, encoding: str = "utf-8") -> str:
    text = "".join(TEXT.format(i=i) for i in range(n))
    path.write_bytes(text.encode(encoding))
    return text


def _kw() -> dict[str, object]:
    return {
        "max_tokens": 120,
        "overlap_tokens": 16,
        "counter": CharEstimate(),
        "regions": ("eu",),
        "residency_rule": "eu/**",
    }


def test_streamed_chunks_equal_whole_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        stream, "BLOCK_BYTES", 4099
    )  # odd: multibyte characters split across blocks
    path = tmp_path / "big.md"
    text = _write(path, 3000)
    doc = _doc(path)
    opened = stream.open_text_stream(doc, max_bytes=10**9)
    assert opened.encoding == "utf-8" and opened.note is None
    assert "".join(opened.blocks()) == text
    streamed = list(chunk_stream(doc, opened.blocks(), **_kw()))  # type: ignore[arg-type]
    whole = list(chunk_document(doc, text, **_kw()))  # type: ignore[arg-type]
    assert streamed == whole and len(whole) > 100


def test_a_late_invalid_byte_settles_the_encoding_before_any_chunk(tmp_path: Path) -> None:
    path = tmp_path / "legacy.txt"
    _write(path, 2000, encoding="utf-8")
    with path.open("ab") as f:
        f.write("Caf\xe9 in M\xfcnchen.".encode("cp1252"))
    doc = _doc(path)
    opened = stream.open_text_stream(doc, max_bytes=10**9)
    assert opened.encoding == "cp1252"
    assert opened.note and opened.note.startswith("invalid UTF-8 at byte ")
    assert "".join(opened.blocks()) == extract_text(doc, max_bytes=10**9).text


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"\x1f\x8b\x08rest", "binary"),
        (b"text\x00more", "binary"),
    ],
)
def test_bad_large_files_are_refused_like_small_ones(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DocumentError) as info:
        stream.open_text_stream(_doc(path), max_bytes=10**9)
    assert info.value.reason == reason and "bad.txt" in info.value.message


def test_too_large_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    _write(path, 10)
    with pytest.raises(DocumentError, match="over the 10-byte limit"):
        stream.open_text_stream(_doc(path), max_bytes=10)


def test_memory_stays_flat_on_a_large_document(tmp_path: Path) -> None:
    path = tmp_path / "forty.txt"
    text = _write(path, 1)
    with path.open("w", encoding="utf-8") as f:
        for i in range(250_000):  # ~40 MB
            f.write(TEXT.format(i=i))
    del text
    doc = _doc(path)
    opened = stream.open_text_stream(doc, max_bytes=10**9)
    tracemalloc.start()
    try:
        count = sum(1 for _ in chunk_stream(doc, opened.blocks(), **_kw()))  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count > 100_000
    assert peak < 16 * 1024 * 1024, (
        f"peak {peak / 2**20:.1f} MiB for a {path.stat().st_size / 2**20:.0f} MiB file"
    )


def test_a_run_streams_large_files_and_reads_the_rest_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "STREAM_ABOVE_BYTES", 50_000)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _write(corpus / "large.txt", 1000)
    _write(corpus / "small.md", 3)
    (corpus / "blank.txt").write_text(" \n" * 40_000)
    cfg = config(corpus, tmp_path)
    run = Run(cfg, Opening.new("r1", flow="test"), conn=Connections())
    items = list(run.corpus_chunks())
    rows = {i.path: i for i in items if isinstance(i, DocumentRow)}
    assert (rows["large.txt"].status, rows["small.md"].status) == ("ok", "ok")
    assert (rows["blank.txt"].status, rows["blank.txt"].reason) == ("error", "empty")
    large_chunks = [i for i in items if not isinstance(i, DocumentRow) and i.path == "large.txt"]
    assert rows["large.txt"].chunks == len(large_chunks) > 10
    text = (corpus / "large.txt").read_text(encoding="utf-8")
    assert all(text[c.char_start : c.char_end] == c.text for c in large_chunks)


# ── a file that changes between the encoding pass and the reading ──────────────────────


def _opened_then(path: Path, change) -> list[str]:  # type: ignore[no-untyped-def]
    """The blocks of ``path`` with ``change(path)`` done after the first one was read."""
    opened = stream.open_text_stream(_doc(path), max_bytes=10**9)
    blocks = opened.blocks()
    got = [next(blocks)]
    change(path)
    got.extend(blocks)
    return got


def test_a_file_that_grows_while_streamed_is_refused_before_its_new_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "BLOCK_BYTES", 4096)
    path = tmp_path / "log.txt"
    text = _write(path, 200)

    def append(p: Path) -> None:
        with p.open("ab") as f:
            f.write(b"appended later\n")

    with pytest.raises(DocumentError, match=r"grew past the [\d,]+ bytes it had") as info:
        _opened_then(path, append)
    assert info.value.reason == "unreadable" and "log.txt" in info.value.message
    assert len(text.encode()) > 4096  # the growth was met mid-stream, not at the start


def test_a_file_rewritten_in_place_while_streamed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "BLOCK_BYTES", 4096)
    path = tmp_path / "draft.md"
    _write(path, 200)

    def rewrite(p: Path) -> None:  # same size, other bytes, as an editor saving in place
        before = p.stat().st_mtime_ns
        with p.open("r+b") as f:
            f.seek(-8, 2)
            f.write(b"EDITED\n\n")
        os.utime(p, ns=(before, before + 1_000_000_000))  # whatever the clock's granularity

    with pytest.raises(DocumentError, match="modification time moved"):
        _opened_then(path, rewrite)


def test_a_file_deleted_after_its_encoding_pass_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "gone.txt"
    _write(path, 50)
    opened = stream.open_text_stream(_doc(path), max_bytes=10**9)
    path.unlink()
    with pytest.raises(DocumentError, match=r"gone\.txt: cannot be read") as info:
        list(opened.blocks())
    assert info.value.reason == "unreadable"


def test_a_file_deleted_while_streamed_is_still_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POSIX keeps an open file's bytes until it is closed: the document read is whole
    and consistent, so it is not an error."""
    monkeypatch.setattr(stream, "BLOCK_BYTES", 4096)
    path = tmp_path / "moved.txt"
    text = _write(path, 200)
    assert "".join(_opened_then(path, Path.unlink)) == text
