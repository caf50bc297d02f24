"""Report benchmark, and the README's screenshot of a report.

    .venv/bin/python bench/report.py                        # 30 nights × 400 chunks
    .venv/bin/python bench/report.py --png docs/report.png  # also the screenshot (Chromium)

Writes a synthetic output root as a month of nightly runs would leave it (three endpoints,
one of them throttled with HTTP 429 in its busiest minutes, a few chunks that fail), through
``Store.write_rows``, then times what ``docroute report`` does: importing matplotlib,
reading the figures (``gather``) and drawing the page (``render``). Prints one JSON object.
``--png`` opens the report in Debian's headless Chromium (``.ci/chromium.sh``) and saves
its top as a small palette PNG.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.report import gather, render  # noqa: E402
from pipeline.store import RunRecord, Store  # noqa: E402

#: (name, region, input USD/Mtok, output USD/Mtok, ms p50, requests per minute it allows)
ENDPOINTS = (
    ("openai-eu", "eu", 0.40, 1.60, 900, 40),
    ("mistral-eu", "eu", 0.10, 0.30, 600, 24),
    ("openai-us", "us", 0.40, 1.60, 700, 60),
)
LIMITS = {name: (rpm, rpm * 1500) for name, _, _, _, _, rpm in ENDPOINTS}
DAY = 86400.0


def night(store: Store, rng: random.Random, n: int, start: float, chunks: int) -> str:
    """One nightly run's documents, chunks, results, ledger and record; returns its id."""
    run_id = f"nightly-{n:02d}"
    rows: dict[str, list[dict[str, Any]]] = {"chunks": [], "results": [], "ledger": []}
    per_minute: dict[tuple[str, int], int] = {}
    spent = 0.0
    failed = 0
    for i in range(chunks):
        path = f"{'eu' if i % 3 else 'us'}/contracts/doc-{i // 4:04d}.pdf"
        chunk = {"chunk_id": f"c{n}-{i}", "doc_id": path, "path": path}
        rows["chunks"].append(chunk | _chunk_fields(i, rng, path))
        options = [e for e in ENDPOINTS if e[1] == path[:2]]
        t = start + 900 * (i / chunks) ** 1.5 + rng.uniform(0, 5)  # a busy start
        outcome, attempt = "rate_limited", 0
        while outcome == "rate_limited" and attempt < 4:
            attempt += 1
            name, region, pin, pout, p50, rpm = options[(i + attempt) % len(options)]
            minute = int((t - start) // 60)
            per_minute[(name, minute)] = per_minute.get((name, minute), 0) + 1
            outcome = "rate_limited" if per_minute[(name, minute)] > rpm else "ok"
            if outcome == "ok" and rng.random() < 0.02:
                outcome = "invalid_output"
            tin, tout = rng.randint(600, 1800), rng.randint(80, 300) * (outcome != "rate_limited")
            cost = (tin * pin + tout * pout) / 1e6 * (outcome != "rate_limited")
            spent += cost
            rows["ledger"].append(
                {"chunk_id": chunk["chunk_id"], "attempt": attempt, "provider": name,
                 "model": "m", "region": region, "mode": "sync", "started_at": t,
                 "latency_ms": rng.lognormvariate(0, 0.35) * p50, "input_tokens": tin,
                 "output_tokens": tout, "cached_input_tokens": 0, "cache_write_tokens": 0,
                 "cost_usd": cost, "reserved_usd": cost * 1.5, "outcome": outcome,
                 "http_status": {"ok": 200, "rate_limited": 429}.get(outcome, 200)}
            )  # fmt: skip
            t += 1.5
        status = "succeeded" if outcome == "ok" else "failed"
        failed += status == "failed"
        rows["results"].append(
            chunk | {"status": status, "reason": None if status == "succeeded" else outcome,
                     "provider": name, "region": region, "attempts": attempt,
                     "cost_usd": cost, "finished_at": t, "schema_name": "chunk_summary"}
        )  # fmt: skip
    for table, table_rows in rows.items():
        store.write_rows(table, run_id, table_rows)
    store.write_run(
        RunRecord(run_id=run_id, flow="nightly_batch", config_hash="x", corpus="corpus",
                  schema_name="chunk_summary", budget_usd=1.0, started_at=start,
                  finished_at=t, status="completed_with_failures" if failed else "succeeded",
                  spend_usd=spent, chunks=chunks, succeeded=chunks - failed, failed=failed)
    )  # fmt: skip
    return run_id


def _chunk_fields(i: int, rng: random.Random, path: str) -> dict[str, Any]:
    size = rng.randint(1500, 6000)
    return {"index": i % 4, "char_start": 0, "char_end": size, "token_estimate": size // 4,
            "text": "x", "regions": [path[:2]], "residency_rule": f"{path[:2]}/**",
            "pages": []}  # fmt: skip


def month(root: Path, nights: int, chunks: int) -> str:
    """``nights`` nightly runs on ``root``, 22:00 UTC each, growing; the last one's id."""
    store, rng = Store(root), random.Random(42)
    start = 1796248800.0  # the last night: 2026-12-02 22:00 UTC
    run_id = ""
    for n in range(nights):
        size = int(chunks * (0.8 + 0.4 * n / max(nights - 1, 1)) * rng.uniform(0.9, 1.1))
        run_id = night(store, rng, n + 1, start + (n - nights + 1) * DAY, size)
    store.refresh_catalog()
    return run_id


def screenshot(page: Path, out: Path) -> dict[str, Any]:
    """The top of ``page`` in headless Chromium, as a palette PNG (small, for the README)."""
    from PIL import Image

    from tests.test_report import Chromium

    with Chromium() as browser:
        loaded = browser.load(page, width=1000)
        raw = browser.screenshot(out.with_suffix(".raw.png"), 1000, loaded["height"])
    with Image.open(raw) as image:
        small = image.resize(
            (image.width * 3 // 5, image.height * 3 // 5), Image.Resampling.LANCZOS
        )
        small.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    raw.unlink()
    return {"png": str(out), "png_bytes": out.stat().st_size, "console_errors": loaded["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--chunks", type=int, default=400, help="chunks of a night (about)")
    parser.add_argument("--png", type=Path, help="also write a screenshot PNG here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "out"
        run_id = month(root, args.nights, args.chunks)
        t0 = time.perf_counter()
        import matplotlib.figure  # noqa: F401  (what the first chart pays, timed apart)

        t1 = time.perf_counter()
        figures = gather(Store(root), run_id)
        t2 = time.perf_counter()
        page = render(figures, LIMITS)
        t3 = time.perf_counter()
        out = Path(tmp) / "report.html"
        out.write_text(page, encoding="utf-8")
        figures_out: dict[str, Any] = {
            "nights": args.nights,
            "ledger_rows_last_night": sum(r[3] for r in figures.spend),
            "charts": page.count("<svg"),
            "import_matplotlib_s": round(t1 - t0, 3),
            "gather_s": round(t2 - t1, 3),
            "render_s": round(t3 - t2, 3),
            "html_bytes": len(page.encode()),
        }
        if args.png:
            figures_out |= screenshot(out, args.png)
    print(json.dumps(figures_out, indent=2))


if __name__ == "__main__":
    main()
