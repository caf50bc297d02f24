"""Chunker benchmark: docroute against langchain-text-splitters, chonkie and semchunk.

    .venv/bin/python bench/chunking.py --others-python /tmp/benchvenv/bin/python
    .venv/bin/python bench/chunking.py --only docroute --budget 10

Builds 100+ MB of English from this machine (man pages with their roff markup stripped,
/usr/share/common-licenses, /usr/share/doc/*/copyright, docstrings of Python's standard
library) in a temporary folder, then runs each chunker in its own subprocess (so peak
RSS is its own: ``VmHWM`` of that process) and prints one JSON object:

- ``corpus``: every file chunked as a document, in char mode (2048 characters, i.e.
  ``CharEstimate`` at 512 tokens) and token mode (tiktoken cl100k_base, 512 tokens), with
  64 tokens / 256 characters of overlap where the library has overlap; MB/s over the
  bytes chunked within ``--budget`` seconds (a slow library stops early, not the run).
  ``mb_per_s`` counts the time spent reading each file too (about 0.4 s for the 101 MB
  here, the same for every library); ``chunker_mb_per_s`` only the time in the chunker.
- ``single_100mb``: the corpus as one 100 MB document: read whole (every library) and,
  for docroute, read in 1 MB blocks through ``split_spans_stream``; a run that passes
  ``--timeout`` seconds is reported as such.

The others' virtualenv needs ``langchain-text-splitters chonkie semchunk tiktoken``; it
must not be the project's (they pull in dependencies docroute does not want).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS, OVERLAP_TOKENS, CHARS_PER_TOKEN = 512, 64, 4
BLOCK = 1 << 20
SINGLE_BYTES = 100 * 10**6
LIBRARIES = ("docroute", "langchain", "chonkie", "semchunk")

# ── the corpus ────────────────────────────────────────────────────────────────────────

_ROFF_REQUEST = re.compile(r"^[.'].*$\n?", re.M)
_ROFF_ESCAPE = re.compile(r"\\f[BIRP1-4]|\\f\(..|\\f\[[^]]*\]|\\[&|^%]|\\s[-+]?\d")


def _man_pages() -> Iterator[tuple[str, str]]:
    for path in sorted(Path("/usr/share/man").glob("man*/*.gz")):
        try:
            raw = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        text = _ROFF_ESCAPE.sub("", _ROFF_REQUEST.sub("", raw)).replace("\\-", "-")
        yield f"man/{path.name[:-3]}", text


def _plain_files() -> Iterator[tuple[str, str]]:
    paths = sorted(Path("/usr/share/common-licenses").glob("*"))
    paths += sorted(Path("/usr/share/doc").glob("*/copyright"))
    for path in paths:
        if path.is_file():
            yield f"doc/{path.parent.name}/{path.name}", path.read_text("utf-8", "replace")


def _docstrings() -> Iterator[tuple[str, str]]:
    stdlib = Path(os.__file__).parent
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        docs = [
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        ]
        text = "\n\n".join(d for d in docs if d)
        if text:
            yield f"py/{path.relative_to(stdlib)}", text


def build_corpus(folder: Path, min_bytes: int) -> tuple[list[Path], Path]:
    """Write the documents (until ``min_bytes``) and ``all.txt``, their concatenation."""
    docs, total = [], 0
    with open(folder / "all.txt", "w", encoding="utf-8") as everything:
        for sources in (_plain_files(), _docstrings(), _man_pages()):
            for _name, text in sources:
                if not text.strip():
                    continue
                path = folder / "docs" / f"{len(docs):06d}.txt"
                path.parent.mkdir(exist_ok=True)
                path.write_text(text, encoding="utf-8")
                everything.write(text + "\n\n")
                docs.append(path)
                total += len(text.encode()) + 2
                if total >= min_bytes:
                    return docs, folder / "all.txt"
    raise SystemExit(f"only {total / 1e6:.0f} MB of English text on this machine")


# ── one library, one mode, in this process (the worker) ───────────────────────────────


def _docroute(mode: str) -> Callable[[str], int]:
    sys.path.insert(0, str(REPO))
    from pipeline.chunking import split_spans
    from pipeline.tokens import CharEstimate, TiktokenCounter

    counter = CharEstimate() if mode == "char" else TiktokenCounter("cl100k_base")
    limits = {"max_tokens": MAX_TOKENS, "overlap_tokens": OVERLAP_TOKENS, "counter": counter}
    return lambda text: sum(1 for _ in split_spans(text, **limits))


def _langchain(mode: str) -> Callable[[str], int]:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    if mode == "char":
        splitter = RecursiveCharacterTextSplitter(
            chunk_size=MAX_TOKENS * CHARS_PER_TOKEN,
            chunk_overlap=OVERLAP_TOKENS * CHARS_PER_TOKEN,
            add_start_index=True,
        )
    else:
        splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
            encoding_name="cl100k_base", chunk_size=MAX_TOKENS, chunk_overlap=OVERLAP_TOKENS
        )
    return lambda text: len(splitter.split_text(text))


def _chonkie(mode: str) -> Callable[[str], int]:
    from chonkie import RecursiveChunker

    tokenizer: Any = "character"
    size = MAX_TOKENS * CHARS_PER_TOKEN if mode == "char" else MAX_TOKENS
    if mode == "token":
        import tiktoken

        tokenizer = tiktoken.get_encoding("cl100k_base")
    chunker = RecursiveChunker(tokenizer=tokenizer, chunk_size=size)  # no overlap option
    return lambda text: len(chunker.chunk(text))


def _semchunk(mode: str) -> Callable[[str], int]:
    import semchunk

    if mode == "char":
        size, overlap = MAX_TOKENS * CHARS_PER_TOKEN, OVERLAP_TOKENS * CHARS_PER_TOKEN
        chunker = semchunk.chunkerify(len, size)
    else:
        size, overlap = MAX_TOKENS, OVERLAP_TOKENS
        import tiktoken

        chunker = semchunk.chunkerify(tiktoken.get_encoding("cl100k_base"), size)
    return lambda text: len(chunker(text, overlap=overlap))


CHUNKERS = {"docroute": _docroute, "langchain": _langchain, "chonkie": _chonkie}
CHUNKERS["semchunk"] = _semchunk


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def _version(library: str) -> str:
    from importlib.metadata import version

    dist = {"docroute": "tiktoken", "langchain": "langchain-text-splitters"}.get(library, library)
    return version(dist)


def work(library: str, mode: str, case: str, source: str, budget: float) -> dict[str, Any]:
    chunk = CHUNKERS[library](mode)
    chunk("Warm up. " * 200)
    before = _peak_rss_mb()
    began, done, chunks, chunking = time.perf_counter(), 0, 0, 0.0
    if case == "corpus":
        for path in Path(source).read_text().splitlines():
            text = Path(path).read_text(encoding="utf-8")
            inside = time.perf_counter()
            chunks += chunk(text)
            chunking += time.perf_counter() - inside
            done += len(text.encode())
            if time.perf_counter() - began > budget:
                break
    elif case == "stream":
        chunks, done = _stream(mode, source)
    else:
        text = Path(source).read_text(encoding="utf-8")
        began = time.perf_counter()
        chunks, done = chunk(text), len(text.encode())
    seconds = time.perf_counter() - began
    chunking = chunking or seconds
    return {
        "library": library, "version": _version(library), "mode": mode, "case": case,
        "mb": round(done / 1e6, 1), "seconds": round(seconds, 2),
        "mb_per_s": round(done / 1e6 / seconds, 2),
        "chunker_mb_per_s": round(done / 1e6 / chunking, 2), "chunks": chunks,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_chunking_mb": round(before, 1),
    }  # fmt: skip


def _stream(mode: str, source: str) -> tuple[int, int]:
    """docroute only: the single document read in blocks, never whole."""
    sys.path.insert(0, str(REPO))
    from pipeline.chunking import split_spans_stream
    from pipeline.tokens import CharEstimate, TiktokenCounter

    counter = CharEstimate() if mode == "char" else TiktokenCounter("cl100k_base")

    def blocks() -> Iterator[str]:
        with open(source, encoding="utf-8") as f:
            while block := f.read(BLOCK):
                yield block

    spans = split_spans_stream(
        blocks(), max_tokens=MAX_TOKENS, overlap_tokens=OVERLAP_TOKENS, counter=counter
    )
    return sum(1 for _ in spans), os.path.getsize(source)


# ── the driver ────────────────────────────────────────────────────────────────────────


def run_one(python: str, args: list[str], timeout: float) -> dict[str, Any]:
    command = [python, __file__, "--worker", *args]
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(REPO / ".tokenizers")}  # no downloads
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"library": args[0], "mode": args[1], "case": args[2], "timeout_s": timeout}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return {"library": args[0], "mode": args[1], "case": args[2], "error": tail[0]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--others-python", default=sys.executable)
    parser.add_argument("--only", choices=LIBRARIES, action="append")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per corpus run")
    parser.add_argument("--timeout", type=float, default=120.0, help="per single-doc run")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        library, mode, case, source, budget = args.worker
        print(json.dumps(work(library, mode, case, source, float(budget))))
        return
    with tempfile.TemporaryDirectory(prefix="docroute-bench-") as tmp:
        print(json.dumps(_bench(Path(tmp), args), indent=1))


def _bench(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    docs, everything = build_corpus(tmp, SINGLE_BYTES + 10**6)
    listing = tmp / "docs.txt"
    listing.write_text("\n".join(map(str, docs)))
    single = tmp / "single.txt"
    with open(everything, "rb") as src, open(single, "wb") as dst:
        dst.write(src.read(SINGLE_BYTES).decode("utf-8", "ignore").encode())
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "corpus": {"documents": len(docs), "mb": round(everything.stat().st_size / 1e6, 1),
                   "built_s": round(time.perf_counter() - began, 1)},
        "settings": {"max_tokens": MAX_TOKENS, "overlap_tokens": OVERLAP_TOKENS,
                     "char_mode_chars": MAX_TOKENS * CHARS_PER_TOKEN, "encoding": "cl100k_base"},
        "runs": [],
    }  # fmt: skip
    for library in args.only or LIBRARIES:
        python = sys.executable if library == "docroute" else args.others_python
        for mode in ("char", "token"):
            corpus = [library, mode, "corpus", str(listing), str(args.budget)]
            report["runs"].append(run_one(python, corpus, args.budget + 120))
            cases = ("single", "stream") if library == "docroute" else ("single",)
            for case in cases:
                one = [library, mode, case, str(single), "0"]
                report["runs"].append(run_one(python, one, args.timeout))
    return report


if __name__ == "__main__":
    main()
