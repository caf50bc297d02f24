"""Discovery (walk, globs, hidden, symlinks) and extraction (sizes, bytes, encodings)."""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
from pathlib import Path

import pytest

import pipeline.ingest.discovery as discovery
from pipeline.ingest import EXTRACTORS, DocumentError, ExtractedText, discover, extract_text
from pipeline.models import Document, stable_id

ALL = ["**"]
MB = 1_000_000


def write(root: Path, rel: str, data: bytes | str = "some text\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def paths(root: Path, include=ALL, exclude=()) -> list[str]:
    return [d.path for d in discover(root, include, exclude)]


def doc_for(root: Path, rel: str) -> Document:
    path = root / rel
    return Document.at(root, path, path.stat().st_size)


def reason(doc: Document, max_bytes: int = MB) -> str:
    with pytest.raises(DocumentError) as info:
        extract_text(doc, max_bytes=max_bytes)
    assert doc.path in info.value.message
    return info.value.reason


# ── discover ──────────────────────────────────────────────────────────────────────────


def test_nested_folders_stream_in_sorted_relative_posix_order(tmp_path: Path) -> None:
    for rel in ["b.txt", "a/z.md", "a.txt", "a/b/c.txt", "a-b.txt", "A.txt", "a/b.txt"]:
        write(tmp_path, rel)
    found = paths(tmp_path)
    assert found == sorted(found)
    assert found == ["A.txt", "a-b.txt", "a.txt", "a/b.txt", "a/b/c.txt", "a/z.md", "b.txt"]


def test_documents_carry_id_path_absolute_path_and_size(tmp_path: Path) -> None:
    write(tmp_path, "eu/contracts/msa.md", "12345")
    (doc,) = discover(tmp_path, ["**/*.md"])
    assert doc == Document(
        doc_id=stable_id("eu/contracts/msa.md"),
        path="eu/contracts/msa.md",
        abs_path=tmp_path / "eu" / "contracts" / "msa.md",
        size_bytes=5,
    )


def test_a_relative_root_gives_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, "corpus/a.txt")
    monkeypatch.chdir(tmp_path)
    (doc,) = discover(Path("corpus"), ALL)
    assert doc.abs_path == tmp_path / "corpus" / "a.txt" and doc.path == "a.txt"


def test_discover_is_lazy(tmp_path: Path) -> None:
    write(tmp_path, "a.txt")
    found = discover(tmp_path, ALL)
    (tmp_path / "b.txt").write_text("late")  # listed at the first next(), not at the call
    assert [d.path for d in found] == ["a.txt", "b.txt"]


def test_unicode_file_names(tmp_path: Path) -> None:
    for rel in ["résumé.txt", "日本/メモ.md", "emoji 🙂.txt"]:
        write(tmp_path, rel)
    assert paths(tmp_path, ["**/*.txt", "**/*.md"]) == [
        "emoji 🙂.txt",
        "résumé.txt",
        "日本/メモ.md",
    ]
    assert [extract_text(d, max_bytes=MB).text for d in discover(tmp_path, ALL)] == [
        "some text\n"
    ] * 3


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    for rel in [".hidden.txt", ".git/config.txt", "a/.cache/x.md", "a/.b.md", "a/seen.md"]:
        write(tmp_path, rel)
    assert paths(tmp_path) == ["a/seen.md"]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlink_loop_neither_hangs_nor_duplicates(tmp_path: Path) -> None:
    write(tmp_path, "top.txt")
    write(tmp_path, "a/b/deep.txt")
    (tmp_path / "a" / "b" / "up").symlink_to("..", target_is_directory=True)  # → a/
    (tmp_path / "a" / "self").symlink_to(tmp_path, target_is_directory=True)  # → root
    assert paths(tmp_path) == ["a/b/deep.txt", "top.txt"]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlinked_files_are_followed_dangling_ones_skipped(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere", "real.txt", "linked")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "link.txt").symlink_to(target)
    (corpus / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    (doc,) = discover(corpus, ALL)
    assert (doc.path, doc.size_bytes) == ("link.txt", 6)
    assert extract_text(doc, max_bytes=MB).text == "linked"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no fifos here")
def test_only_regular_files_are_yielded(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.txt")  # opening it would block until a writer comes
    write(tmp_path, "a.txt")
    assert paths(tmp_path) == ["a.txt"]


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    for rel in ["a.md", "a.txt", "drafts/b.md", "eu/c.md", "eu/x/d.txt", "notes.pdf"]:
        write(tmp_path, rel)
    assert paths(tmp_path, ["**/*.md"]) == ["a.md", "drafts/b.md", "eu/c.md"]
    assert paths(tmp_path, ["**/*.md"], ["drafts/**"]) == ["a.md", "eu/c.md"]
    assert paths(tmp_path, ["eu/**", "*.txt"]) == ["a.txt", "eu/c.md", "eu/x/d.txt"]
    assert paths(tmp_path, []) == []


def test_a_bad_glob_is_refused_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("'**.md'")):
        discover(tmp_path, ["**.md"])
    with pytest.raises(ValueError, match=re.escape("'a[b'")):
        discover(tmp_path, ALL, ["a[b"])


def test_a_missing_root_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(discover(tmp_path / "nope", ALL))


def test_a_folder_that_cannot_be_listed_is_logged_and_skipped(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    # chmod cannot stop root (the tests' user here), so make the listing itself fail.
    write(tmp_path, "a.txt")
    write(tmp_path, "locked/b.txt")
    write(tmp_path, "z.txt")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.discovery"):
        assert paths(tmp_path) == ["a.txt", "z.txt"]
    assert "locked" in caplog.text and "Permission denied" in caplog.text


# ── extract_text: the shared checks ───────────────────────────────────────────────────


def test_suffix_table_reads_txt_md_markdown_in_any_case(tmp_path: Path) -> None:
    assert {".txt", ".md", ".markdown"} <= set(EXTRACTORS)
    for rel in ["a.txt", "b.md", "c.markdown", "D.TXT", "e.Md"]:
        write(tmp_path, rel, "# Title\r\n\r\nBody\n")
        assert extract_text(doc_for(tmp_path, rel), max_bytes=MB).text == "# Title\r\n\r\nBody\n"


def test_unsupported_suffix_is_left_out_by_globs_or_refused_when_included(tmp_path: Path) -> None:
    write(tmp_path, "a.txt")
    write(tmp_path, "scan.rtf", b"{\\rtf1 ...}")
    write(tmp_path, "README", "no suffix")
    assert paths(tmp_path, ["**/*.txt", "**/*.md"]) == ["a.txt"]
    included = {d.path: d for d in discover(tmp_path, ["**/*"])}
    assert sorted(included) == ["README", "a.txt", "scan.rtf"]
    assert reason(included["scan.rtf"]) == "unsupported"
    assert reason(included["README"]) == "unsupported"
    with pytest.raises(DocumentError, match=r"'\.rtf'.*\.md, \.pdf, \.txt"):
        extract_text(included["scan.rtf"], max_bytes=MB)


def test_empty_and_whitespace_only_files_are_empty(tmp_path: Path) -> None:
    write(tmp_path, "zero.txt", b"")
    write(tmp_path, "blank.md", " \r\n\t\n\u00a0\n")
    write(tmp_path, "bom-only.txt", b"\xef\xbb\xbf")
    assert reason(doc_for(tmp_path, "zero.txt")) == "empty"
    assert reason(doc_for(tmp_path, "blank.md")) == "empty"
    assert reason(doc_for(tmp_path, "bom-only.txt")) == "empty"


def test_nul_bytes_near_the_start_mean_binary(tmp_path: Path) -> None:
    write(tmp_path, "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(tmp_path, "utf16.txt", "hello".encode("utf-16"))
    write(tmp_path, "late-nul.txt", b"a" * 9000 + b"\x00tail")
    assert reason(doc_for(tmp_path, "image.txt")) == "binary"
    assert reason(doc_for(tmp_path, "utf16.txt")) == "binary"
    late = extract_text(doc_for(tmp_path, "late-nul.txt"), max_bytes=MB)
    assert late.text.endswith("\x00tail")  # only the first 8 KiB are sniffed


def test_too_large_is_judged_before_reading(tmp_path: Path) -> None:
    write(tmp_path, "big.txt", "x" * 101)
    assert reason(doc_for(tmp_path, "big.txt"), max_bytes=100) == "too_large"
    assert extract_text(doc_for(tmp_path, "big.txt"), max_bytes=101).text == "x" * 101
    # A folder cannot be read; being judged too large proves nothing was read first.
    (tmp_path / "huge.txt").mkdir()
    claimed = Document.at(tmp_path, tmp_path / "huge.txt", 10**12)
    with pytest.raises(DocumentError, match="1,000,000,000,000 bytes") as info:
        extract_text(claimed, max_bytes=100)
    assert info.value.reason == "too_large"


def test_a_file_that_grew_past_the_limit_since_discovery_is_too_large(tmp_path: Path) -> None:
    write(tmp_path, "grows.txt", "x" * 10)
    doc = doc_for(tmp_path, "grows.txt")
    write(tmp_path, "grows.txt", "x" * 500)
    assert reason(doc, max_bytes=100) == "too_large"


def test_reading_stops_one_byte_past_the_limit(tmp_path: Path) -> None:
    import tracemalloc

    with open(tmp_path / "sparse.txt", "wb") as f:
        f.truncate(50 * MB)  # sparse: 50 MB of NULs that take no disk
    claimed = Document.at(tmp_path, tmp_path / "sparse.txt", 10)  # it grew since discovery
    tracemalloc.start()
    try:
        assert reason(claimed, max_bytes=1000) == "too_large"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MB


def test_unreadable_files(tmp_path: Path) -> None:
    write(tmp_path, "gone.txt")
    gone = doc_for(tmp_path, "gone.txt")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "folder.txt").mkdir()
    folder = Document.at(tmp_path, tmp_path / "folder.txt", 0)
    assert reason(gone) == "unreadable"
    assert reason(folder) == "unreadable"
    with pytest.raises(DocumentError, match="No such file"):
        extract_text(gone, max_bytes=MB)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root reads files whatever their mode; test_unreadable_files covers open() failing",
)
def test_a_file_without_read_permission_is_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.txt")
    path.chmod(0)
    try:
        assert reason(doc_for(tmp_path, "secret.txt")) == "unreadable"
    finally:
        path.chmod(0o600)


# ── extract_text: decoding ────────────────────────────────────────────────────────────


def test_utf8_is_kept_exactly_as_decoded(tmp_path: Path) -> None:
    text = "Zürich 日本 🙂\r\nline two\rold mac\n\n"
    write(tmp_path, "u.md", text)
    assert extract_text(doc_for(tmp_path, "u.md"), max_bytes=MB) == ExtractedText(
        text=text, encoding="utf-8", note=None
    )


def test_bom_is_stripped(tmp_path: Path) -> None:
    write(tmp_path, "bom.txt", b"\xef\xbb\xbfhello\n")
    got = extract_text(doc_for(tmp_path, "bom.txt"), max_bytes=MB)
    assert (got.text, got.encoding, got.note) == ("hello\n", "utf-8-sig", None)


def test_cp1252_is_decoded_with_a_note(tmp_path: Path) -> None:
    text = "Café “quoted” – 5 €\r\n"
    write(tmp_path, "win.txt", text.encode("cp1252"))
    got = extract_text(doc_for(tmp_path, "win.txt"), max_bytes=MB)
    assert (got.text, got.encoding) == (text, "cp1252")
    assert got.note == "invalid UTF-8 at byte 3: decoded as cp1252"


def test_bytes_cp1252_lacks_fall_back_to_latin1_with_a_note(tmp_path: Path) -> None:
    data = b"caf\xe9 \x81\x8d\x90 end"  # 0x81, 0x8d, 0x90 have no cp1252 character
    write(tmp_path, "old.txt", data)
    got = extract_text(doc_for(tmp_path, "old.txt"), max_bytes=MB)
    assert (got.text, got.encoding) == (data.decode("latin-1"), "latin-1")
    assert got.note == "invalid UTF-8 at byte 3: decoded as latin-1"


def test_bom_then_bad_bytes_reports_the_offset_in_the_file(tmp_path: Path) -> None:
    write(tmp_path, "mixed.txt", b"\xef\xbb\xbfab\xe9")
    got = extract_text(doc_for(tmp_path, "mixed.txt"), max_bytes=MB)
    assert (got.text, got.note) == ("abé", "invalid UTF-8 at byte 5: decoded as cp1252")


# ── DocumentError ─────────────────────────────────────────────────────────────────────


def test_document_error_reads_as_its_message_and_survives_pickling() -> None:
    exc = DocumentError("binary", "a/b.txt: looks binary (NUL byte at offset 0), not text")
    assert str(exc) == exc.message
    back = pickle.loads(pickle.dumps(exc))
    assert (back.reason, back.message, str(back)) == (exc.reason, exc.message, exc.message)
