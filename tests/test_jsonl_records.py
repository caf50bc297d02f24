"""JSON Lines records as documents: each usable record of a ``.jsonl`` file is its own
document (``file.jsonl#<id>``, else ``#<line>``, repeats ``#id~2``), with its own residency,
offsets within its own text and results; ``corpus.jsonl.per_record: false`` keeps the file
one document. Path rules and the manifest look at the file's path; a rerun re-reads a
record's residency from its file. The end-to-end test runs against the simulator and reads
the ledger: an EU record is never sent to the (cheaper) US endpoint, not even when the EU
endpoint fails, and its rerun keeps its own residency."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.batches import drive
from pipeline.config import load_config
from pipeline.corpus import read_corpus
from pipeline.models import Chunk, stable_id
from pipeline.opening import Request, decide
from pipeline.policy import Residency
from pipeline.run import Run
from pipeline.simulator import SimulatorServer
from pipeline.store import DocumentRow, Store
from pipeline.tokens import get_counter
from tests.test_batch_mode import WORDS, provider

LONG = " ".join(WORDS[i % len(WORDS)] for i in range(1500))  # several chunks

CRM = [  # any/crm.jsonl: line 3 is not JSON, line 5 has no id, line 6 repeats c-1
    {
        "id": "c-1",
        "text": "  An EU customer's complaint about late delivery.  ",
        "residency": ["eu"],
    },
    {"id": "c-2", "text": "A US customer asks for a refund.", "residency": "us"},
    "not json",
    {"id": "c-3", "text": LONG},
    {"text": "A record without an id."},
    {"id": "c-1", "text": "A second record that calls itself c-1."},
]


def _lines(records: list[Any]) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


def _corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for rel, records in {
        "any/crm.jsonl": CRM,
        "logs/day.jsonl": [{"id": 7, "text": "Log."}],
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(_lines(records), encoding="utf-8")
    return root


def _config(tmp_path: Path, providers: list[dict[str, Any]] | None = None, **corpus: Any) -> Path:
    data: dict[str, Any] = {
        "corpus": {
            "path": str(tmp_path / "corpus"),
            "residency": [
                {"match": "any/**", "regions": ["eu", "us"]},
                {"match": "**/*.jsonl", "regions": ["ch"]},  # the file's path is matched
            ],
            "residency_default": "deny",
        }
        | corpus,
        "task": {"schema": "chunk_summary", "max_output_tokens": 400},
        "chunking": {"counter": "chars", "max_tokens": 300, "overlap_tokens": 0},
        "budget": {"run_usd": 10.0},
        "routing": {"mode": "sync", "max_attempts": 2, "backoff_initial_s": 0},
        "providers": providers or [provider("sim-eu", "eu", "gpt-4.1-mini")],
        "output": {"root": str(tmp_path / "out")},
    }
    path = tmp_path / "docroute.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _read(config: Path, **overrides: Any) -> tuple[dict[str, DocumentRow], list[Chunk]]:
    cfg = load_config(config, overrides=overrides)
    rows: dict[str, DocumentRow] = {}
    chunks: list[Chunk] = []
    for item in read_corpus(cfg, run_id="t", counter=get_counter("chars")):
        if isinstance(item, Chunk):
            chunks.append(item)
        else:
            rows[item.path] = item
    return rows, chunks


def _decisions(chunks: list[Chunk]) -> dict[str, tuple[tuple[str, ...], str]]:
    return {c.path: (c.regions, c.residency_rule) for c in chunks}


def test_each_record_is_its_own_document_with_its_own_residency(tmp_path: Path) -> None:
    _corpus(tmp_path)
    (tmp_path / "m.csv").write_text("path,regions\nany/crm.jsonl#c-2,deny\n")
    rows, chunks = _read(_config(tmp_path, residency_manifest="m.csv"))
    crm = ["any/crm.jsonl#c-1", "any/crm.jsonl#c-2", "any/crm.jsonl#c-3", "any/crm.jsonl#5"]
    assert list(rows) == [*crm, "any/crm.jsonl#c-1~2", "logs/day.jsonl#7"]
    assert all(r.doc_id == stable_id(p) and r.status == "ok" for p, r in rows.items())
    assert {r.note for p, r in rows.items() if p.startswith("any/")} == {
        "1 of 6 lines skipped: not JSON or no 'text' field"
    }, "the file's skipped line is still counted, on each of its records"
    assert _decisions(chunks) == {
        "any/crm.jsonl#c-1": (("eu",), "metadata:residency"),  # its own field, no intersection
        "any/crm.jsonl#c-2": (("us",), "metadata:residency"),  # beats its manifest entry
        "any/crm.jsonl#c-3": (("eu", "us"), "any/**"),
        "any/crm.jsonl#5": (("eu", "us"), "any/**"),
        "any/crm.jsonl#c-1~2": (("eu", "us"), "any/**"),
        "logs/day.jsonl#7": (("ch",), "**/*.jsonl"),
    }
    assert {p: r.chunks for p, r in rows.items()}["any/crm.jsonl#c-3"] > 2


def test_the_manifest_names_a_record_or_its_file(tmp_path: Path) -> None:
    _corpus(tmp_path)
    (tmp_path / "m.csv").write_text("path,regions\nany/crm.jsonl,ch\nany/crm.jsonl#5,us\n")
    decided = _decisions(_read(_config(tmp_path, residency_manifest="m.csv"))[1])
    assert decided["any/crm.jsonl#5"] == (("us",), "manifest:m.csv:3")
    assert decided["any/crm.jsonl#c-3"] == (("ch",), "manifest:m.csv:2")
    assert decided["any/crm.jsonl#c-1"] == (("eu",), "metadata:residency")


def test_offsets_are_exact_within_each_records_text(tmp_path: Path) -> None:
    _corpus(tmp_path)
    _, chunks = _read(_config(tmp_path))
    texts = {f"any/crm.jsonl#{k}": r["text"].strip() for k, r in zip(
        ["c-1", "c-2", "c-3", "5", "c-1~2"], [r for r in CRM if isinstance(r, dict)], strict=True
    )}  # fmt: skip
    texts["logs/day.jsonl#7"] = "Log."
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        text = texts[chunk.path]
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        by_doc.setdefault(chunk.path, []).append(chunk)
    for path, parts in by_doc.items():
        assert parts[0].char_start == 0 and parts[-1].char_end == len(texts[path])
        assert {c.doc_id for c in parts} == {stable_id(path)}
    assert "[c-3]" not in "".join(c.text for c in chunks), "the id is in the path, not the text"


def test_per_record_false_keeps_the_file_one_document(tmp_path: Path) -> None:
    _corpus(tmp_path)
    rows, chunks = _read(_config(tmp_path), **{"corpus.jsonl.per_record": False})
    assert list(rows) == ["any/crm.jsonl", "logs/day.jsonl"]
    assert rows["any/crm.jsonl"].doc_id == stable_id("any/crm.jsonl")
    assert rows["any/crm.jsonl"].note == "1 of 6 lines skipped: not JSON or no 'text' field"
    crm = [c for c in chunks if c.path == "any/crm.jsonl"]
    assert {(c.regions, c.residency_rule) for c in crm} == {
        ((), "metadata:residency:intersection")  # eu and us disagree: nowhere
    }
    assert crm[0].text.startswith("[c-1]\nAn EU customer's")


def test_a_rerun_reads_a_records_residency_from_its_file(tmp_path: Path) -> None:
    root = _corpus(tmp_path)
    residency = Residency.from_config(load_config(_config(tmp_path)).corpus)
    assert residency.decide("any/crm.jsonl#c-1") == residency.decide(
        "any/crm.jsonl#c-1", metadata=({"residency": ["eu"]},), file="any/crm.jsonl"
    )
    assert residency.decide("any/crm.jsonl#c-1").regions == ("eu",)
    assert residency.decide("any/crm.jsonl#c-2").regions == ("us",)
    assert residency.decide("any/crm.jsonl#5").rule == "any/**"
    assert residency.decide("logs/day.jsonl#7").rule == "**/*.jsonl"
    # A record gone from its file, or whose file is gone, allows no region (not the glob's).
    gone = residency.decide("any/crm.jsonl#c-9")
    assert gone.regions == () and gone.rule == "metadata:residency:invalid"
    assert residency.decide("any/lost.jsonl#c-1").regions == ()
    # A file whose own name has ".jsonl#" in it: the disk tells which part is the file.
    (root / "any/odd.jsonl#x.jsonl").write_text(_lines([{"text": "T", "residency": "eu"}]))
    assert residency.file_of("any/odd.jsonl#x.jsonl#1") == "any/odd.jsonl#x.jsonl"
    assert residency.decide("any/odd.jsonl#x.jsonl#1").regions == ("eu",)
    assert residency.decide("any/odd.jsonl#x.jsonl").rule == "metadata:residency"  # the file


def _night(path: Path, request: Request) -> dict[str, Any]:
    """One run in this process, as the flow drives it (without Prefect)."""
    cfg = load_config(path)
    opening = decide(Store(cfg.output.root), cfg, request)

    async def go() -> dict[str, Any]:
        async with Run.open(cfg, opening) as run:
            await drive(run.batches(), run.process_batch, run.parallel)
        return run.summary()

    return asyncio.run(go())


def test_an_eu_record_goes_only_to_the_eu_and_its_rerun_keeps_its_residency(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    _corpus(tmp_path)
    (tmp_path / "corpus/logs/day.jsonl").unlink()  # ch: no endpoint serves it

    def endpoints(eu_fails: int) -> list[dict[str, Any]]:  # the US is the cheaper one
        return [
            provider("sim-eu", "eu", "gpt-4.1-mini", fail_first=eu_fails),
            provider("sim-us", "us", "gpt-4.1-nano"),
        ]

    config = _config(tmp_path, endpoints(eu_fails=100))
    _night(config, Request(run_id="n1"))
    store = Store(tmp_path / "out")
    sent = store.read(
        "SELECT c.path, l.region, r.status FROM ledger l JOIN chunks c USING (run_id, chunk_id) "
        "JOIN results r USING (run_id, chunk_id) WHERE l.run_id = 'n1' AND l.provider IS NOT NULL"
    ).rows
    regions: dict[str, set[str]] = {}
    for path, region, _ in sent:
        regions.setdefault(path, set()).add(region)
    assert regions["any/crm.jsonl#c-1"] == {"eu"}, "its EU endpoint failed: never the US"
    assert regions["any/crm.jsonl#c-2"] == {"us"}
    assert regions["any/crm.jsonl#c-3"] == {"us"}, "the glob allows both: the cheaper"
    failed = {p for p, _, status in sent if status != "succeeded"}
    assert failed == {"any/crm.jsonl#c-1"}

    config = _config(tmp_path, endpoints(eu_fails=0))
    child = _night(config, Request(run_id="r1", parent_run_id="n1"))
    assert child["succeeded"] == child["chunks"] == 1
    rows = store.read(
        "SELECT c.path, c.regions, c.residency_rule, l.region FROM chunks c JOIN ledger l "
        "USING (run_id, chunk_id) WHERE c.run_id = 'r1' AND l.provider IS NOT NULL"
    ).rows
    assert [(p, list(r), rule, at) for p, r, rule, at in rows] == [
        ("any/crm.jsonl#c-1", ["eu"], "metadata:residency", "eu")
    ]
