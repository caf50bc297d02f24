"""Reuse benchmark: how long a run takes to load what it may reuse, on a long history.

    .venv/bin/python bench/reuse.py                       # 365 nights × 5,000 chunks
    .venv/bin/python bench/reuse.py --nights 365 --chunks 50000

Writes a synthetic output root as docroute would leave it: ``--nights`` runs over a corpus
of ``--chunks`` chunks where ``--churn`` of them change each night, each night with one
compacted ``results`` part (the unchanged chunks reuse the answer of the night that paid
for them) and one ``answers`` part (the reuse index: only what the night paid for). Then
times what a run with ``reuse.across_runs`` does on top of its calls: ``ReuseIndex.load``
(before the first call), and the answer lookups of a whole night, batch by batch. Prints
one JSON object. The data is written with pyarrow straight into the store's layout, so
the figures are docroute's read path only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.family import ReuseIndex  # noqa: E402
from pipeline.models import stable_id  # noqa: E402
from pipeline.store import RunRecord, Store  # noqa: E402
from pipeline.store.tables import SCHEMAS, TIMESTAMP, timestamps  # noqa: E402

T0 = 1_750_000_000.0


def write_history(root: Path, nights: int, chunks: int, churn: float) -> int:
    """The synthetic root; returns how many distinct keys it holds."""
    store = Store(root)
    changed_per_night = int(chunks * churn)
    keys: set[str] = set()
    for night in range(nights):
        run_id = f"2026{night:04d}-020000-bench"
        store.write_run(
            RunRecord(
                run_id=run_id, parent_run_id=None, flow="bench", status="succeeded",
                started_at=T0 + night * 86_400, finished_at=T0 + night * 86_400 + 3600,
                updated_at=T0 + night * 86_400 + 3600, config_hash="bench", corpus="c",
                schema_name="chunk_summary", budget_usd=10.0, spend_usd=1.0, documents=chunks,
                document_errors=0, chunks=chunks, succeeded=chunks, failed=0, skipped=0,
                family_id=run_id,
            )
        )  # fmt: skip
        # chunk i's version: bumped every night for the first ``changed_per_night`` chunks
        versions = [night if i < changed_per_night else 0 for i in range(chunks)]
        idem = [stable_id("key", i, v) for i, v in enumerate(versions)]
        keys.update(idem)
        # what docroute writes: a chunk unchanged since the night that paid for it reuses
        # that night's answer (``reused_from``); only paid-for answers enter ``answers``
        paid_night = [night if i < changed_per_night or night == 0 else 0 for i in range(chunks)]
        origin = [None if p == night else f"2026{p:04d}-020000-bench" for p in paid_night]
        n = chunks
        finished = T0 + night * 86_400 + 1800
        columns = {
            "run_id": [run_id] * n,
            "chunk_id": [stable_id("chunk", i, v) for i, v in enumerate(versions)],
            "doc_id": [stable_id("doc", i) for i in range(n)],
            "path": [f"eu/doc-{i:06d}.txt" for i in range(n)],
            "status": ["succeeded"] * n,
            "reason": [None] * n,
            "output": ['{"summary": "s", "topics": ["t"]}'] * n,
            "provider": ["p"] * n,
            "model": ["m"] * n,
            "region": ["eu"] * n,
            "attempts": [1] * n,
            "cost_usd": [0.0001 if o is None else 0.0 for o in origin],
            "finished_at": [finished] * n,
            "schema_name": ["chunk_summary"] * n,
            "error": [None] * n,
            "schema_version": ["1"] * n,
            "idem_key": idem,
            "reused_from": origin,
            "excluded": [None] * n,
        }
        write_part(root, "results", run_id, columns)
        fresh = [i for i in range(n) if origin[i] is None]
        answers = {
            "run_id": [run_id] * len(fresh),
            "idem_key": [idem[i] for i in fresh],
            "finished_at": [finished] * len(fresh),
            "cost_usd": [0.0001] * len(fresh),
            "region": ["eu"] * len(fresh),
        }
        write_part(root, "answers", run_id, answers)
    return len(keys)


def write_part(root: Path, table: str, run_id: str, columns: dict[str, list[object]]) -> None:
    """One compacted part of ``table`` for ``run_id``, in the store's layout."""
    schema = SCHEMAS[table]
    arrays = [
        timestamps(columns[f.name]) if f.type == TIMESTAMP else pa.array(columns[f.name], f.type)
        for f in schema
    ]
    folder = root / table / run_id
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), folder / "part-0-m.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--churn", type=float, default=0.02)
    parser.add_argument("--batch", type=int, default=64, help="routing.batch_size")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="docroute-bench-reuse-"))
    try:
        started = time.perf_counter()
        distinct = write_history(tmp / "out", args.nights, args.chunks, args.churn)
        written_s = time.perf_counter() - started
        store = Store(tmp / "out")
        started = time.perf_counter()
        index = ReuseIndex.load(store, "tonight", across_runs=True)
        load_s = time.perf_counter() - started
        # tonight: the unchanged chunks (paid for on the first night), looked up batch by
        # batch as the run does; the first batch reads that night's answers, the rest hit
        # the index's memory
        unchanged = [
            stable_id("key", i, 0) for i in range(int(args.chunks * args.churn), args.chunks)
        ]
        batches = [unchanged[i : i + args.batch] for i in range(0, len(unchanged), args.batch)]
        started = time.perf_counter()
        first = index.answers(store, batches[0])
        first_s = time.perf_counter() - started
        hits = len(first)
        for batch in batches[1:]:
            hits += len(index.answers(store, batch))
        night_s = time.perf_counter() - started
        print(
            json.dumps(
                {
                    "nights": args.nights,
                    "chunks_per_night": args.chunks,
                    "result_rows": args.nights * args.chunks,
                    "distinct_keys": distinct,
                    "index_keys": len(index),
                    "write_history_s": round(written_s, 1),
                    "reuse_index_load_s": round(load_s, 2),
                    "batch_size": args.batch,
                    "first_batch_lookup_s": round(first_s, 3),
                    "night_lookups_s": round(night_s, 2),
                    "night_batches": len(batches),
                    "night_hits": hits,
                }
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
