"""What a run would cost, before any call: ``docroute plan`` and ``docroute run --dry-run``.

    plan = make_plan(load_config("examples/docroute.yaml"))
    plan.total.cost_usd, plan.budget_covered     # 0.0071, True
    print(render_plan(plan, "table"))            # or "json"

The corpus is read and chunked exactly as a run reads it (``pipeline.corpus``), with the
same residency decisions; no endpoint is connected, no call is made and nothing is
written. Each chunk is priced at the endpoint the router would try first under
``routing.strategy``; a chunk with no candidate is listed with its document and why:
``residency_deny`` (its rule allows no region), ``no_endpoint_in_region`` (no endpoint is
configured in its regions), ``too_long`` (no endpoint of its regions fits prompt plus max
output in its context window) or ``no_candidate`` (anything else, e.g. no structured
output).

Per chunk, with ``A`` attempts per chunk and ``o`` output tokens per attempt:

    input  = prompt estimate × input ratio × A      (the prompt as dispatch estimates it)
    output = o × A
    cost   = input × input price + output × output price    (the first endpoint's prices)

``A``, ``o`` and the input ratio come from the ledger's earlier runs of the same schema
when there are some, else from defaults; the plan says which it used (``basis.source``).
The plan also prices the run by ``routing.mode`` (``by_mode``): all-sync, all-batch
(each chunk at its cheapest endpoint that takes batch jobs, at batch prices) and ``auto``
for the schedule's deadline. It also warns when ``task.max_output_tokens`` leaves too
little room for the schema's answers. Both are worked out from the ledger by
``pipeline.plan_history``; this module holds the estimate (``make_plan``) and its rendering
(``render_plan``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.changes import Changes, last_night
from pipeline.config import Config
from pipeline.corpus import read_corpus, residency_warnings
from pipeline.family import ReuseIndex, ReuseScope, Versions
from pipeline.models import Chunk
from pipeline.plan_history import (
    DEFAULT_OUTPUT_FRACTION,
    HISTORY_RUNS,
    Basis,
    History,
    answer_sizes,
    history,
    output_room_warning,
)
from pipeline.policy import Endpoint, Residency, Router, endpoints_from_config, output_cap
from pipeline.policy.routing import fits, strategy_from_config
from pipeline.providers.structured import enforcement_warnings
from pipeline.store import DocumentRow, RunRecord, Store
from pipeline.tokens import get_counter
from pipeline.validation import first_messages, prompt_token_estimate
from schemas import SchemaSpec, get_schema

__all__ = [
    "DEFAULT_OUTPUT_FRACTION",
    "HISTORY_RUNS",
    "Basis",
    "Plan",
    "make_plan",
    "render_plan",
]

UnroutableReason = Literal["residency_deny", "no_endpoint_in_region", "too_long", "no_candidate"]


@dataclass(slots=True)
class Line:
    """Chunks whose first choice is one endpoint, and what they are expected to cost."""

    endpoint: str
    region: str
    chunks: int = 0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cost_usd: float = 0.0


@dataclass(slots=True)
class Unroutable:
    """A document with chunks that no endpoint may take, and why."""

    path: str
    reason: UnroutableReason
    detail: str
    chunks: int = 0


@dataclass(slots=True)
class Plan:
    config: str
    schema: str
    strategy: str
    basis: Basis
    budget_usd: float
    documents: int = 0
    unreadable: list[dict[str, str | None]] = field(default_factory=list)
    chunks: int = 0
    endpoints: list[Line] = field(default_factory=list)
    total: Line = field(default_factory=lambda: Line(endpoint="total", region=""))
    unroutable: list[Unroutable] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mode: str = "sync"
    """``routing.mode`` of the config."""
    reused_chunks: int = 0
    """Chunks a run would answer from earlier runs (``reuse``): not sent, not priced."""
    changes: Changes = field(default_factory=Changes)
    """New, changed, unchanged and deleted documents against last night's run."""
    by_mode: dict[str, float] = field(default_factory=dict)
    """The estimate all-sync, all-batch (each chunk at its cheapest endpoint that takes
    batch jobs, at batch prices; sync where none does) and in ``auto`` for the deadline."""

    @property
    def budget_covered(self) -> bool:
        return self.total.cost_usd <= self.budget_usd

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["changes"] = self.changes.to_dict()
        out["budget_covered"] = self.budget_covered
        out["basis"]["describe"] = self.basis.describe()
        return out


def make_plan(
    cfg: Config, *, config_path: Path | str = "", budget_usd: float | None = None
) -> Plan:
    """Read and chunk ``cfg``'s corpus and price it (see the module docstring)."""
    schema = get_schema(cfg.task.schema_name)
    strategy = strategy_from_config(cfg.routing, schema.model.model_fields)
    residency = Residency.from_config(cfg.corpus)
    past = history(cfg, schema.name)
    estimator = _Estimator(cfg, schema.instructions, past)
    plan = Plan(
        config=str(config_path),
        schema=schema.name,
        strategy=strategy.name,
        basis=past.overall,
        budget_usd=cfg.budget.run_usd if budget_usd is None else budget_usd,
        warnings=residency_warnings(cfg, residency),
        mode=cfg.routing.mode,
    )
    batch_usd = 0.0
    router = Router(endpoints_from_config(cfg))
    plan.warnings += enforcement_warnings(router.endpoints, schema.json_schema())
    room = output_room_warning(cfg, schema, answer_sizes(cfg, schema.name))
    if room:
        plan.warnings.append(room)
    lines: dict[str, Line] = {}
    blocked: dict[str, Unroutable] = {}
    counter = get_counter(cfg.chunking.counter)
    reuse, before = _reuse(cfg, schema)
    plan.changes = Changes.against(reuse.store, before)
    items = read_corpus(cfg, run_id="plan", counter=counter, residency=residency, announce=False)
    for item in items:
        if isinstance(item, DocumentRow):
            plan.changes.document(item.path)
            _count_document(plan, item)
            continue
        plan.chunks += 1
        key = reuse.versions.key(item.text)
        plan.changes.chunk(key)
        if reuse.index.reusable(key, item.regions):
            plan.reused_chunks += 1  # answered already: the run sends and pays nothing
            continue
        prompt = estimator.prompt_tokens(item)
        max_out = cfg.task.max_output_tokens
        found = router.candidates(
            item, prompt_tokens=prompt, max_output_tokens=max_out, strategy=strategy
        )
        if not found:
            why = _why_unroutable(router.endpoints, item, prompt, max_out)
            blocked.setdefault(item.path, Unroutable(item.path, *why)).chunks += 1
            continue
        first = found[0]
        reuse.index.add(key, "plan", first.region)  # the same text later in the run reuses it
        line = lines.setdefault(first.key, Line(endpoint=first.key, region=first.region))
        estimator.add(line, first, prompt)
        estimator.add(plan.total, first, prompt)
        batch_usd += estimator.batch_cost(found, prompt, strategy.name == "ordered")
    plan.changes.finish()
    plan.by_mode = _by_mode(cfg, plan.total.cost_usd, batch_usd)
    plan.endpoints = sorted(lines.values(), key=lambda x: -x.cost_usd)
    plan.unroutable = list(blocked.values())
    return plan


@dataclass(frozen=True, slots=True)
class _Reuse:
    store: Store
    versions: Versions
    index: ReuseIndex


def _reuse(cfg: Config, schema: SchemaSpec) -> tuple[_Reuse, RunRecord | None]:
    """What a run of ``cfg`` would reuse (the root's answers, as ``reuse`` scopes them;
    none with ``across_runs: false``: a new run's family has none), and last night's run."""
    store = Store(cfg.output.root)
    scope = ReuseScope.of(cfg, store)
    index = ReuseIndex.scoped(store, "plan", scope) if scope.across_runs else ReuseIndex("plan")
    return _Reuse(store, Versions.of(cfg, schema), index), last_night(store, cfg)


def _count_document(plan: Plan, row: DocumentRow) -> None:
    plan.documents += 1
    if row.status == "error":
        plan.unreadable.append({"path": row.path, "reason": row.reason, "message": row.message})


def _why_unroutable(
    endpoints: Iterable[Endpoint], chunk: Chunk, prompt: int, max_out: int
) -> tuple[UnroutableReason, str]:
    rule = f"rule {chunk.residency_rule}"
    if not chunk.regions:
        return "residency_deny", f"{rule} allows no region"
    regions = ", ".join(chunk.regions)
    local = [e for e in endpoints if e.region in chunk.regions]
    if not local:
        return "no_endpoint_in_region", f"no endpoint in region(s) {regions} ({rule})"
    if not any(fits(e, prompt, max_out) for e in local):
        return "too_long", (
            f"~{prompt:,} prompt tokens + {max_out:,} max output fit no context window in "
            f"region(s) {regions}"
        )
    return "no_candidate", f"no endpoint in region(s) {regions} can take it ({rule})"


class _Estimator:
    def __init__(self, cfg: Config, default_instructions: str, past: History) -> None:
        self.instructions = cfg.task.instructions or default_instructions
        self.max_out = cfg.task.max_output_tokens
        self.history = past

    def prompt_tokens(self, chunk: Chunk) -> int:
        """The prompt estimate dispatch routes by (first attempt)."""
        return prompt_token_estimate(
            first_messages(self.instructions, chunk.text), chunk.token_estimate
        )

    def add(self, line: Line, e: Endpoint, prompt: int) -> None:
        inp, out, cost = self.cost(e, prompt)
        line.chunks += 1
        line.input_tokens += inp
        line.output_tokens += out
        line.cost_usd += cost

    def cost(self, e: Endpoint, prompt: int, *, batch: bool = False) -> tuple[float, float, float]:
        """(input tokens, output tokens, USD) one chunk is expected to take at ``e``."""
        b = self.history.for_endpoint(e.key)
        out = min(b.output_tokens_per_attempt, output_cap(e, self.max_out))
        inp = prompt * b.input_ratio * b.attempts_per_chunk
        out *= b.attempts_per_chunk
        p = e.price.batch() if batch else e.price
        return inp, out, (inp * p.input_per_mtok + out * p.output_per_mtok) / 1e6 * b.price_ratio

    def batch_cost(self, candidates: list[Endpoint], prompt: int, ordered: bool) -> float:
        """A chunk's expected cost in ``routing.mode: batch``, chosen as the batch path
        chooses: the cheapest candidate at the price it is billed (batch prices where it
        takes batch jobs), or the first one for ``ordered``."""
        pool = candidates[:1] if ordered else candidates
        return min(self.cost(e, prompt, batch=e.batch)[2] for e in pool)


def _by_mode(cfg: Config, sync_usd: float, batch_usd: float) -> dict[str, float]:
    """The three modes' estimates. ``auto`` is the batch figure when the deadline leaves
    the jobs room (more than an hour: vendors promise 24 h and most jobs end far sooner),
    else the sync one; what does not come back in time is finished at sync prices."""
    now = time.time()
    due = cfg.schedule.deadline_after(now)
    auto = batch_usd if due is None or due - now > AUTO_MIN_WINDOW_S else sync_usd
    return {"sync": sync_usd, "batch": batch_usd, "auto": auto}


#: The shortest deadline for which ``plan`` counts ``auto`` at batch prices.
AUTO_MIN_WINDOW_S = 3600.0


def _changes(c: Changes) -> list[str]:
    if c.since_run_id is None:
        return [f"  changes    {c.new} new document(s): no earlier full run of this corpus"]
    out = [
        f"  changes    since run {c.since_run_id}: {c.new} new · {c.changed} changed · "
        f"{c.unchanged} unchanged · {c.deleted} deleted"
    ]
    if c.deleted_paths:
        more = c.deleted - len(c.deleted_paths)
        out.append(
            f"  deleted    {', '.join(c.deleted_paths)}" + (f" and {more} more" if more else "")
        )
    return out


def render_plan(plan: Plan, fmt: Literal["table", "json"]) -> str:
    """The plan for a terminal (``table``) or a program (``json``)."""
    if fmt == "json":
        return json.dumps(plan.to_dict(), indent=2, ensure_ascii=False)
    return "\n".join(_table(plan))


def _table(plan: Plan) -> list[str]:
    t = plan.total
    routable = sum(x.chunks for x in plan.endpoints)
    out = [
        f"plan · config {plan.config} · schema {plan.schema} · strategy {plan.strategy}",
        f"  documents  {plan.documents}"
        + (f" ({len(plan.unreadable)} unreadable)" if plan.unreadable else ""),
        f"  chunks     {plan.chunks} ({plan.reused_chunks} reused, {routable} to send, "
        f"{plan.chunks - plan.reused_chunks - routable} with no route)",
        *_changes(plan.changes),
        f"  estimate   {plan.basis.describe()}",
        "",
        f"  {'first endpoint':<44} {'region':<8} {'chunks':>6} {'input tok':>11} "
        f"{'output tok':>11} {'est. USD':>10}",
    ]
    for x in [*plan.endpoints, t]:
        out.append(
            f"  {x.endpoint[:44]:<44} {x.region:<8} {x.chunks:>6} {x.input_tokens:>11,.0f} "
            f"{x.output_tokens:>11,.0f} {x.cost_usd:>10.4f}"
        )
    share = 100 * t.cost_usd / plan.budget_usd
    verdict = "covered" if plan.budget_covered else "NOT covered"
    out += [
        "",
        f"  budget     ${t.cost_usd:.4f} of ${plan.budget_usd:.2f} ({share:.1f}%): {verdict}",
    ]
    if plan.by_mode:
        m = plan.by_mode
        out.append(
            f"  by mode    sync ${m['sync']:.4f} · batch ${m['batch']:.4f} · auto "
            f"${m['auto']:.4f} (routing.mode: {plan.mode}; batch jobs bill half)"
        )
    if plan.unroutable:
        out.append(f"  no route   {len(plan.unroutable)} document(s), sent nowhere:")
        out += [
            f"    {u.path}  ({u.chunks} chunk(s)) {u.reason}: {u.detail}" for u in plan.unroutable
        ]
    for u in plan.unreadable:
        out.append(f"  unreadable {u['path']}: {u['reason']}")
    out += [f"  warning    {w}" for w in plan.warnings]
    return out
