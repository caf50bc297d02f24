"""The run's one progress line: done of the total once known, rate, ETA, spend and the
spend projected to the end (``pipeline.progress``)."""

from __future__ import annotations

from dataclasses import replace

from pipeline.progress import Progress
from tests.test_store import result


def test_the_line_gains_total_rate_eta_and_projection_as_they_become_known() -> None:
    p = Progress(budget_usd=5.0)
    p.succeeded = 10  # a resumed run: ten chunks and $0.10 from its earlier attempt
    p.spend_usd = 0.10
    p.begin()
    start = p.started
    for i in range(30):
        p.add(replace(result(i), cost_usd=0.01))
    assert p.line(now=start + 10) == (
        "40 chunks · 40 ok · 0 failed · 0 skipped · 0 docs · 3.0 chunks/s · $0.4000 of $5.00 (8.0%)"
    ), "no total yet: no ETA, no projection"
    p.total = 100
    assert p.line(now=start + 10) == (
        "40/100 chunks (40%) · 40 ok · 0 failed · 0 skipped · 0 docs · 3.0 chunks/s · "
        "ETA 20s · $0.4000 of $5.00 (8.0%) · projected $1.0000"
    )
    assert p.eta_s(now=start + 10) == 20.0
    for i in range(60):
        p.add(replace(result(i), status="failed", cost_usd=0.0))
    assert p.line(now=start + 30) == (
        "100/100 chunks (100%) · 40 ok · 60 failed · 0 skipped · 0 docs · 3.0 chunks/s · "
        "$0.4000 of $5.00 (8.0%)"
    ), "done: nothing left to estimate"


def test_a_long_eta_reads_in_minutes_and_hours() -> None:
    p = Progress(budget_usd=1.0)
    p.begin()
    p.add(result(0))
    p.total = 7_201
    assert "ETA 2h00m" in p.line(now=p.started + 1)
    p.total = 200
    assert "ETA 3m19s" in p.line(now=p.started + 1)
