"""Reuse benchmark: how long a run takes to load what it may reuse, on a long history.

    .venv/bin/python bench/reuse.py                       # 365 nights × 5,000 chunks
    .venv/bin/python bench/reuse.py --nights 365 --chunks 50000

Writes a synthetic output root: ``--nights`` runs, each with one compacted results part of
``--chunks`` succeeded chunks (a corpus where ``--churn`` of the chunks change each
night, so the root holds the keys of every version), then times what opening a run with
``reuse.across_runs`` does before any call: ``ReuseIndex.load`` over the whole root, and
one batch's lookup of its answers. Prints one JSON object. The data is written with
pyarrow straight into the store's layout, so the figure is docroute's read path only.
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
from pipeline.store.tables import SCHEMAS, timestamps  # noqa: E402

T0 = 1_750_000_000.0


def write_history(root: Path, nights: int, chunks: int, churn: float) -> int:
    """The synthetic root; returns how many distinct keys it holds."""
    store = Store(root)
    schema = SCHEMAS["results"]
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
        n = chunks
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
            "cost_usd": [0.0001] * n,
            "finished_at": [T0 + night * 86_400 + 1800] * n,
            "schema_name": ["chunk_summary"] * n,
            "error": [None] * n,
            "schema_version": ["1"] * n,
            "idem_key": idem,
            "reused_from": [None] * n,
            "excluded": [None] * n,
        }
        arrays = [
            timestamps(columns[f.name])
            if f.name == "finished_at"
            else pa.array(columns[f.name], f.type)
            for f in schema
        ]
        folder = root / "results" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), folder / "part-0-m.parquet")
    return len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--churn", type=float, default=0.02)
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
        probe = [stable_id("key", i, 0) for i in range(args.chunks - 250, args.chunks)]
        started = time.perf_counter()
        found = index.answers(store, probe)
        lookup_s = time.perf_counter() - started
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
                    "one_batch_lookup_s": round(lookup_s, 3),
                    "one_batch_hits": len(found),
                }
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
