"""A run's report: one self-contained HTML file with its charts as inline SVG.

    from pipeline.report import limits_from_config, write_report
    write_report(Store(cfg.output.root), "n-2026-12-03", Path("report.html"),
                 limits=limits_from_config(cfg))   # → Path("report.html")

The file opens offline: no script, no font, no stylesheet or image from anywhere, the
charts drawn by matplotlib's SVG backend (glyphs as paths, so they look the same on any
machine). Sections: spend by endpoint and region; outcomes and failure reasons; latency
p50/p95 per endpoint; quota use per minute against the configured RPM/TPM with HTTP 429s
marked; budget burn-down; the most expensive documents; and the root's recent nightly runs.
A section with nothing to draw says so in a ``none`` note instead of drawing an empty chart.

The pieces are pure: ``gather`` reads the run's figures with ``Store.read``, ``render``
turns them into HTML. matplotlib is imported only when a chart is drawn, so commands that
never draw do not pay its start-up.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pipeline.store import Store

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pipeline.config import Config

#: Endpoint name → (requests per minute, tokens per minute) it is configured for.
Limits = Mapping[str, tuple[int | None, int | None]]
#: Nightly runs shown in the trend section (this one and the ones before it).
RECENT_RUNS = 30
#: Documents in the "most expensive" section.
TOP_DOCUMENTS = 10
#: Points a time series is cut into at most (burn-down): enough for a smooth line.
MAX_POINTS = 400
_WIDTH_IN, _HEIGHT_IN = 7.5, 2.8
_COLORS = ("#4269d0", "#efb118", "#3ca951", "#ff725c", "#a463f2", "#97bbf5", "#9c6b4e")
_THROTTLED = "#d62728"


class ReportError(ValueError):
    """The report cannot be made (an unknown run id): the message says which and why."""


@dataclass
class Figures:
    """What the report shows of one run, as rows read from the store."""

    run: dict[str, Any]
    spend: list[tuple[str, str, float, int]] = field(default_factory=list)
    outcomes: list[tuple[str, int]] = field(default_factory=list)
    reasons: list[tuple[str, int]] = field(default_factory=list)
    latency: list[tuple[str, float, float, int]] = field(default_factory=list)
    minutes: list[tuple[str, float, int, int, int]] = field(default_factory=list)
    burn: list[tuple[float, float]] = field(default_factory=list)
    documents: list[tuple[str, float, int, int]] = field(default_factory=list)
    nights: list[tuple[str, datetime, float, int, int]] = field(default_factory=list)


def limits_from_config(cfg: Config) -> dict[str, tuple[int | None, int | None]]:
    """Each provider's configured (rpm, tpm), the ``limits`` a report draws quota lines at."""
    return {p.name: (p.rate_limits.rpm, p.rate_limits.tpm) for p in cfg.providers}


def write_report(store: Store, run_id: str, out: Path, *, limits: Limits | None = None) -> Path:
    """Write the report of ``run_id`` to ``out`` (parents created) and return its path.

    Raises ``ReportError`` when the root has no run ``run_id``.
    """
    page = render(gather(store, run_id), limits or {})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


# --- reading --------------------------------------------------------------------------------


def gather(store: Store, run_id: str) -> Figures:
    """The figures of ``run_id``, each section's rows from one query of the ledger and runs."""
    found = store.read("SELECT * FROM runs WHERE run_id = ?", [run_id]).to_dicts()
    if not found:
        recent = store.read("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5").rows
        known = ", ".join(r for (r,) in recent) or "none"
        raise ReportError(f"no run {run_id!r} in {store.root} (latest runs: {known})")
    one = [run_id]
    return Figures(
        run=found[0],
        spend=_rows(store, SPEND, one),
        outcomes=_rows(store, OUTCOMES, one),
        reasons=_rows(store, REASONS, one),
        latency=_rows(store, LATENCY, one),
        minutes=_rows(store, MINUTES, one),
        burn=_burn(store, run_id),
        documents=_rows(store, DOCUMENTS, [run_id, run_id, TOP_DOCUMENTS]),
        nights=_rows(store, NIGHTS, [run_id, RECENT_RUNS])[::-1],
    )


def _rows(store: Store, sql: str, params: Sequence[Any]) -> list[Any]:
    return list(store.read(sql, params).rows)


SPEND = (
    "SELECT provider, coalesce(region, '?'), sum(cost_usd), count(*) FROM ledger "
    "WHERE run_id = ? AND provider IS NOT NULL GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
)
OUTCOMES = "SELECT outcome, count(*) FROM ledger WHERE run_id = ? GROUP BY 1 ORDER BY 2 DESC, 1"
REASONS = (
    "SELECT status || ': ' || coalesce(reason, '?'), count(*) FROM results "
    "WHERE run_id = ? AND status <> 'succeeded' GROUP BY 1 ORDER BY 2 DESC, 1"
)
# Batch rows time a whole job, not a call: latency and quota are the synchronous calls'.
LATENCY = (
    "SELECT provider, quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95), count(*) "
    "FROM ledger WHERE run_id = ? AND provider IS NOT NULL AND mode = 'sync' "
    "AND latency_ms IS NOT NULL GROUP BY 1 ORDER BY 1"
)
# Minutes since the run's first call; tokens as vendors count them against TPM (in + out).
MINUTES = (
    "WITH l AS (SELECT *, min(started_at) OVER () AS t0 FROM ledger "
    "WHERE run_id = ? AND provider IS NOT NULL AND mode = 'sync') "
    "SELECT provider, floor(epoch(started_at) / 60 - epoch(t0) / 60) AS minute, count(*), "
    "sum(input_tokens + output_tokens), count(*) FILTER (WHERE http_status = 429) "
    "FROM l GROUP BY 1, 2 ORDER BY 1, 2"
)
# A chunk's text may recur in two documents: each chunk counts once, under one path.
DOCUMENTS = (
    "WITH c AS (SELECT chunk_id, min(path) AS path FROM chunks WHERE run_id = ? GROUP BY 1) "
    "SELECT c.path, sum(l.cost_usd), count(*), count(DISTINCT l.chunk_id) "
    "FROM ledger l JOIN c USING (chunk_id) WHERE l.run_id = ? "
    "GROUP BY 1 HAVING sum(l.cost_usd) > 0 ORDER BY 2 DESC, 1 LIMIT ?"
)
# This run and the nightly runs before it on the root (reruns are repairs, not nights).
NIGHTS = (
    "WITH r AS (SELECT run_id, started_at, chunks, failed + skipped AS failed FROM runs "
    "WHERE (parent_run_id IS NULL AND flow = 'nightly_batch') OR run_id = $1), "
    "recent AS (SELECT * FROM r WHERE started_at <= (SELECT started_at FROM r WHERE run_id = $1) "
    "ORDER BY started_at DESC LIMIT $2) "
    "SELECT recent.run_id, started_at, coalesce(cost, 0), chunks, failed FROM recent "
    "LEFT JOIN (SELECT run_id, sum(cost_usd) AS cost FROM ledger "
    "WHERE run_id IN (SELECT run_id FROM recent) GROUP BY 1) USING (run_id) "
    "ORDER BY started_at DESC"
)


def _burn(store: Store, run_id: str) -> list[tuple[float, float]]:
    """(seconds since the first call, cumulative USD), at most ``MAX_POINTS`` steps."""
    span = store.read(
        "SELECT epoch(min(started_at)), epoch(max(started_at)) FROM ledger WHERE run_id = ?",
        [run_id],
    ).rows[0]
    if span[0] is None:
        return []
    step = max((span[1] - span[0]) / MAX_POINTS, 1.0)  # seconds per point
    rows = store.read(
        "SELECT ceil((epoch(started_at) - ?) / ?) AS b, sum(cost_usd) FROM ledger "
        "WHERE run_id = ? GROUP BY 1 ORDER BY 1",
        [span[0], step, run_id],
    ).rows
    total, out = 0.0, [(0.0, 0.0)]
    for bucket, cost in rows:
        total += cost
        out.append((bucket * step, total))
    return out


# --- drawing --------------------------------------------------------------------------------


def svg(draw: Callable[[Figure], None], name: str, height: float = _HEIGHT_IN) -> str:
    """The ``<svg>`` element of a figure ``draw`` fills, ids salted with ``name``.

    The salt keeps ids (clip paths, glyphs) unique between the charts of one page and the
    same from one report to the next; no metadata (date, creator) is written, so equal data
    gives equal bytes.
    """
    import matplotlib
    from cycler import cycler
    from matplotlib.figure import Figure

    with matplotlib.rc_context(
        {
            "svg.hashsalt": f"docroute-{name}",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": cycler(color=_COLORS),
        }
    ):
        fig = Figure(figsize=(_WIDTH_IN, height), layout="constrained")
        draw(fig)
        buf = io.StringIO()
        fig.savefig(
            buf, format="svg", metadata=dict.fromkeys(("Date", "Creator", "Format", "Type"))
        )
    text = buf.getvalue()
    return text[text.index("<svg") :]


def hbars(ax: Axes, labels: Sequence[str], values: Sequence[float], fmt: str) -> None:
    """Horizontal bars, largest on top, each labelled with its value."""
    ys = range(len(labels))[::-1]
    bars = ax.barh(list(ys), list(values), color=_COLORS[0])
    ax.set_yticks(list(ys), [_short(label) for label in labels])
    ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3)
    ax.margins(x=0.15)


def _short(label: str, width: int = 40) -> str:
    """``label`` cut from the left (a path's end says most), so axes keep their room."""
    return label if len(label) <= width else "…" + label[-(width - 1) :]


def spend_chart(rows: Sequence[tuple[str, str, float, int]]) -> str:
    return svg(
        lambda fig: hbars(
            fig.subplots(), [f"{p} ({r})" if r else p for p, r, _, _ in rows],
            [c for _, _, c, _ in rows],
            "${:.4f}",
        ),
        "spend",
        height=0.6 + 0.3 * len(rows),
    )  # fmt: skip


def counts_chart(rows: Sequence[tuple[str, int]], name: str) -> str:
    return svg(
        lambda fig: hbars(fig.subplots(), [k for k, _ in rows], [n for _, n in rows], "{:,}"),
        name,
        height=0.6 + 0.3 * len(rows),
    )


def latency_chart(rows: Sequence[tuple[str, float, float, int]]) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        xs = range(len(rows))
        for offset, (i, label) in ((-0.2, (1, "p50")), (0.2, (2, "p95"))):
            values = [row[i] for row in rows]
            bars = ax.bar([x + offset for x in xs], values, width=0.4, label=label)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=2)
        ax.set_xticks(list(xs), [row[0] for row in rows])
        ax.set_ylabel("ms per call")
        fig.legend(loc="outside upper right", ncols=2, frameon=False)

    return svg(draw, "latency")


def quota_chart(rows: Sequence[tuple[str, float, int, int, int]], limits: Limits) -> str:
    """Requests and tokens per minute per endpoint, dashed at its limit, 429s as red x."""
    from matplotlib.ticker import MaxNLocator

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, 2)
        for n, endpoint in enumerate(sorted({r[0] for r in rows})):
            mine = [r for r in rows if r[0] == endpoint]
            color = _COLORS[n % len(_COLORS)]
            for k, ax in enumerate(axes):
                ax.plot([r[1] for r in mine], [r[2 + k] for r in mine], "o-", color=color,
                        markersize=3, label=endpoint)  # fmt: skip
                cap = limits.get(endpoint, (None, None))[k]
                if cap:
                    ax.axhline(
                        cap, color=color, linestyle="--", linewidth=1, label=f"{endpoint} limit"
                    ).set_gid(f"limit-{k}-{endpoint}")
            hit = [r for r in mine if r[4]]
            if hit:
                axes[0].scatter([r[1] for r in hit], [r[2] for r in hit], marker="x", s=40,
                                color=_THROTTLED, zorder=3, label=f"{endpoint}: HTTP 429"
                                ).set_gid(f"throttled-{endpoint}")  # fmt: skip
        last = max(r[1] for r in rows)
        for ax, what in zip(axes, ("requests / min", "tokens / min"), strict=True):
            ax.set_xlabel("minute of the run (from the first call)")
            ax.set_ylabel(what)
            ax.set_ylim(bottom=0)
            ax.set_xlim(-0.5, last + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=4,
                   frameon=False, fontsize=7)  # fmt: skip

    return svg(draw, "quota", height=3.2)


def burn_chart(points: Sequence[tuple[float, float]], budget: float) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        unit, per = _unit(points[-1][0])
        ax.step([p[0] / per for p in points], [p[1] for p in points], where="post", label="spent")
        ax.axhline(budget, color=_THROTTLED, linestyle="--", linewidth=1, label="budget")
        ax.set_xlabel(f"{unit} since the first call")
        ax.set_ylabel("USD")
        ax.set_ylim(0, max(budget, points[-1][1]) * 1.08)
        ax.legend(frameon=False)

    return svg(draw, "burn")


def _unit(seconds: float) -> tuple[str, float]:
    """The time unit an axis spanning ``seconds`` reads best in, and its length in seconds."""
    if seconds < 120:
        return "seconds", 1.0
    return ("minutes", 60.0) if seconds < 3 * 3600 else ("hours", 3600.0)


def nights_chart(rows: Sequence[tuple[str, datetime, float, int, int]]) -> str:
    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, 3)
        labels = [f"{started:%m-%d}" for _, started, _, _, _ in rows]
        if len(set(labels)) < len(labels):  # more than one run a day: name them
            labels = [_short(row[0], 12) for row in rows]
        xs = list(range(len(rows)))
        shown = xs[:: -max(1, len(xs) // 6)][::-1]  # about six labels, tonight's always
        series: list[tuple[str, list[float]]] = [
            ("USD per night", [r[2] for r in rows]),
            ("chunks", [float(r[3]) for r in rows]),
            ("not succeeded %", [100 * r[4] / r[3] if r[3] else 0.0 for r in rows]),
        ]
        for ax, (title, values) in zip(axes, series, strict=True):
            ax.bar(xs, values, color=_COLORS[0])
            ax.bar(xs[-1:], values[-1:], color=_COLORS[1])  # tonight
            ax.set_title(title)
            ax.set_xticks(shown, [labels[x] for x in shown])
            ax.tick_params(axis="x", labelrotation=45)

    return svg(draw, "nights", height=2.6)


# --- the page -------------------------------------------------------------------------------


def render(figures: Figures, limits: Limits) -> str:
    """The whole page: a header with the run's counts, then one ``<section>`` per view."""
    run = figures.run
    return PAGE.format(
        title=_e(f"docroute report: {run['run_id']}"),
        head=_header(run),
        sections="\n".join(section(part) for part in _sections(figures, limits)),
    )


class Section(NamedTuple):
    """One part of the page: its charts, what goes under them, and what it says without any."""

    id: str
    title: str
    charts: list[str]
    extra: str = ""
    empty: str = "none"


def _sections(f: Figures, limits: Limits) -> list[Section]:
    budget = float(f.run["budget_usd"])
    throttled = sum(r[4] for r in f.minutes)
    outcome_charts = [counts_chart(f.outcomes, "outcomes")] if f.outcomes else []
    if f.reasons:
        outcome_charts.append(counts_chart(f.reasons, "reasons"))
    all_succeeded = _note("none: every chunk succeeded") if f.outcomes else ""
    documents = [(path, "", usd, n) for path, usd, n, _ in f.documents]
    return [
        Section(
            "spend",
            "Spend by endpoint and region",
            [spend_chart(f.spend)] if f.spend else [],
            table(("endpoint", "region", "USD", "attempts"), f.spend),
            "none: no call was billed",
        ),
        Section(
            "outcomes",
            "Attempt outcomes, and why chunks did not succeed",
            outcome_charts,
            table(("chunk status: reason", "chunks"), f.reasons) or all_succeeded,
            "none: no attempt was recorded",
        ),
        Section(
            "latency",
            "Latency per endpoint (synchronous calls)",
            [latency_chart(f.latency)] if f.latency else [],
            table(("endpoint", "p50 ms", "p95 ms", "calls"), f.latency),
            "none: no synchronous call",
        ),
        Section(
            "quota",
            f"Quota use per minute ({throttled} HTTP 429 answer(s))",
            [quota_chart(f.minutes, limits)] if f.minutes else [],
            "" if throttled else _note("none: no endpoint answered HTTP 429"),
            "none: no synchronous call",
        ),
        Section(
            "budget",
            f"Budget burn-down (cap ${budget:,.2f})",
            [burn_chart(f.burn, budget)] if len(f.burn) > 1 else [],
            empty="none: nothing was spent",
        ),
        Section(
            "documents",
            f"Most expensive documents (top {TOP_DOCUMENTS})",
            [spend_chart(documents)] if documents else [],
            table(("document", "USD", "attempts", "chunks"), f.documents),
            "none: no document cost money",
        ),
        Section(
            "nights",
            f"Recent nightly runs on this root (last {RECENT_RUNS})",
            [nights_chart(f.nights)] if len(f.nights) > 1 else [],
            table(("run", "started", "USD", "chunks", "not succeeded"), f.nights[::-1]),
            "none: this is the root's only nightly run so far",
        ),
    ]


def section(part: Section) -> str:
    """One ``<section>``; its ``data-charts`` says how many ``<svg>`` it holds (the browser
    test counts them), and with no chart it holds its ``none`` note instead."""
    figures = [f'<figure class="chart">{chart}</figure>' for chart in part.charts]
    body = "\n".join(figures) or _note(part.empty)
    return (
        f'<section id="{part.id}" data-charts="{len(part.charts)}">\n<h2>{_e(part.title)}</h2>\n'
        f"{body}\n{part.extra}\n</section>"
    )


def _note(text: str) -> str:
    return f'<p class="none">{_e(text)}</p>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A small HTML table of the numbers behind a chart ("" when there are none)."""
    if not rows:
        return ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<details><summary>numbers</summary><table><tr>{head}</tr>{body}</table></details>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return _e(str(value))


def _header(run: Mapping[str, Any]) -> str:
    started = run["started_at"]
    when = started.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if started else "?"
    facts = [
        ("status", run["status"]), ("started", when), ("chunks", run["chunks"]),
        ("succeeded", run["succeeded"]), ("failed", run["failed"]), ("skipped", run["skipped"]),
        ("spend", f"${run['spend_usd']:,.4f} of ${run['budget_usd']:,.2f}"),
        ("parent", run["parent_run_id"] or "none"),
    ]  # fmt: skip
    cells = "".join(f"<div><b>{_e(str(v))}</b><span>{_e(k)}</span></div>" for k, v in facts)
    return f"<h1>Run {_e(run['run_id'])}</h1><div class=facts>{cells}</div>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; color: #222; max-width: 60rem; margin: 1.5rem auto;
       padding: 0 1rem; }}
h1 {{ font-size: 1.5rem; margin: 0 0 .5rem; }} h2 {{ font-size: 1.1rem; margin: 1.6rem 0 .4rem; }}
.facts {{ display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; }}
.facts div {{ display: flex; flex-direction: column; }}
.facts span {{ color: #666; font-size: .8rem; }}
figure.chart {{ margin: 0; }} figure.chart svg {{ max-width: 100%; height: auto; }}
.none {{ color: #666; font-style: italic; }}
table {{ border-collapse: collapse; font-size: .85rem; }}
td, th {{ padding: .15rem .6rem; border-bottom: 1px solid #ddd; text-align: left; }}
</style></head>
<body>
{head}
{sections}
<footer><p class="none">Written by docroute from the ledger; opens offline.</p></footer>
</body></html>
"""

__all__ = [
    "RECENT_RUNS",
    "Figures",
    "Limits",
    "ReportError",
    "gather",
    "limits_from_config",
    "render",
    "write_report",
]
