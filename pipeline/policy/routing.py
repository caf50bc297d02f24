"""Candidate endpoints for a chunk, in the order of a strategy, never outside its regions.

    router = Router(endpoints_from_config(cfg))
    plan = router.plan(chunk, prompt_tokens=900, max_output_tokens=1024, strategy=Cheapest())
    plan.candidates                    # [Endpoint, …] in the strategy's order
    plan.excluded                      # [Exclusion("eu-small/m", "context_window"), …]

An ``Endpoint`` is one model at one provider: the capability record the router reads
(region, prices, context window, structured output). The router never looks at a
provider's kind or name to decide anything.

Preflight leaves out, and says why, every endpoint of the chunk's regions that cannot
serve it: its provider is disabled for the run (``disabled``), it cannot enforce a schema
(``no_structured_output``), its context window cannot hold the prompt plus the max output
(``context_window``), or the budget's downgrade ceiling puts it out of reach
(``budget_downgrade``). Endpoints outside the chunk's regions are never candidates and
are not listed.

A ``Strategy`` orders what is left and judges a validated answer:

- ``Cheapest``: lowest worst-case cost first (the default);
- ``Ordered``: the config's order (providers as listed, then their models);
- ``Cascade``: cheapest first; an answer whose confidence field is below the threshold
  sends the chunk on to the next dearer tier.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from pipeline.config import Config
from pipeline.config_sections import ModelConfig, RoutingConfig
from pipeline.errors import ConfigError
from pipeline.models import Chunk, Outcome
from pipeline.prices import Price, load_price_table
from pipeline.providers.presets import speaks_batch

#: Share of the context window kept free for tokenizer differences between the
#: offline estimate and the provider's own count.
CONTEXT_MARGIN = 0.9
#: Max output of a config-priced model that does not say.
DEFAULT_MAX_OUTPUT = 4096

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Endpoint:
    provider: str
    kind: str
    region: str
    model: str
    price: Price
    structured_output: bool
    order: int  # position in the config, the tie-breaker
    structured_mode: str = "json_schema"
    batch: bool = False
    """Batch jobs may go here: its adapter speaks a batch API, the config allows it and the
    model has a batch price (``Price.batch``)."""

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"


def endpoints_from_config(cfg: Config) -> list[Endpoint]:
    """Every (provider, model) pair of the config, priced from the table and overrides."""
    table = load_price_table()
    out: list[Endpoint] = []
    for i, p in enumerate(cfg.providers):
        for j, m in enumerate(p.models):
            price = _price_of(m, table, where=f"providers[{i}].models[{j}]")
            out.append(
                Endpoint(
                    provider=p.name,
                    kind=p.kind,
                    region=p.region,
                    model=m.id,
                    price=price,
                    structured_output=m.structured_output,
                    order=len(out),
                    structured_mode=p.structured_mode(m),
                    batch=p.batch and speaks_batch(p.kind, p.preset) and price.batchable,
                )
            )
    return out


def _price_of(m: ModelConfig, table: dict[str, Price], where: str) -> Price:
    base = table.get(m.id)
    if base is not None:
        return Price(
            input_per_mtok=_pick(m.input_per_mtok, base.input_per_mtok),
            output_per_mtok=_pick(m.output_per_mtok, base.output_per_mtok),
            cached_input_per_mtok=_pick(m.cached_input_per_mtok, base.cached_input_per_mtok),
            context_window=_pick(m.context_window, base.context_window),
            max_output_tokens=_pick(m.max_output_tokens, base.max_output_tokens),
            priced_at=base.priced_at,
            cache_write_per_mtok=base.cache_write_per_mtok,
            batch_input_per_mtok=_pick(m.batch_input_per_mtok, base.batch_input_per_mtok),
            batch_output_per_mtok=_pick(m.batch_output_per_mtok, base.batch_output_per_mtok),
        )
    if m.input_per_mtok is None or m.output_per_mtok is None or m.context_window is None:
        needed = ("input_per_mtok", "output_per_mtok", "context_window")
        missing = [k for k in needed if getattr(m, k) is None]
        raise ConfigError(
            f"{where}: model {m.id!r} is not in the shipped price table; set "
            + ", ".join(missing)
            + " for it (docroute never calls a model whose cost it cannot count)"
        )
    return Price(
        input_per_mtok=m.input_per_mtok,
        output_per_mtok=m.output_per_mtok,
        cached_input_per_mtok=_pick(m.cached_input_per_mtok, m.input_per_mtok),
        context_window=m.context_window,
        max_output_tokens=_pick(m.max_output_tokens, DEFAULT_MAX_OUTPUT),
        priced_at="config",
        batch_input_per_mtok=m.batch_input_per_mtok,
        batch_output_per_mtok=m.batch_output_per_mtok,
    )


def _pick(override: T | None, default: T) -> T:
    return default if override is None else override


ExclusionReason = Literal[
    "context_window", "no_structured_output", "disabled", "cooling_down", "budget_downgrade"
]


@dataclass(frozen=True, slots=True)
class Exclusion:
    """An endpoint of the chunk's regions that preflight (or the budget) left out, and why."""

    endpoint: str  # "provider/model"
    reason: ExclusionReason


@dataclass(frozen=True, slots=True)
class Plan:
    """What the router offers one chunk: ``candidates`` in order, ``excluded`` with reasons."""

    candidates: list[Endpoint]
    excluded: list[Exclusion] = field(default_factory=list)

    def refusal(self, chunk: Chunk) -> tuple[Outcome, str]:
        """For an empty plan: the ledger outcome and the reason no call is made."""
        reasons = {x.reason for x in self.excluded}
        if "budget_downgrade" in reasons:
            return "budget_exhausted", (
                "every allowed endpoint is at or above the budget's downgrade ceiling"
            )
        if "context_window" in reasons:
            return "context_exceeded", (
                "the prompt plus the max output fits the context window of no endpoint in "
                f"region(s) {', '.join(chunk.regions)}"
            )
        if not chunk.regions:
            return "no_route", f"residency rule {chunk.residency_rule!r} allows no region"
        why = ", ".join(sorted(reasons))
        return "no_route", (
            f"no endpoint in region(s) {', '.join(chunk.regions)} is available and fits the chunk"
            + (f" ({why})" if why else "")
        )


class Strategy(Protocol):
    """How candidates are ordered, and whether a validated answer is good enough."""

    @property
    def name(self) -> str:
        """As in ``routing.strategy``."""
        ...

    def rank(self, e: Endpoint, prompt_tokens: int, max_output_tokens: int) -> tuple[float, ...]:
        """Sort key of ``e`` (lower first); equal keys are one tier, spread over by quota."""
        ...

    def judge(self, output: str) -> str | None:
        """None to keep the validated JSON ``output``; else why to escalate."""
        ...


@dataclass(frozen=True, slots=True)
class Cheapest:
    """Lowest worst-case cost for this chunk first."""

    name: str = "cheapest"

    def rank(self, e: Endpoint, prompt_tokens: int, max_output_tokens: int) -> tuple[float, ...]:
        return (round(cost_bound(e, prompt_tokens, max_output_tokens), 12),)

    def judge(self, output: str) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Ordered:
    """The config's priority order: providers as listed, then each provider's models."""

    name: str = "ordered"

    def rank(self, e: Endpoint, prompt_tokens: int, max_output_tokens: int) -> tuple[float, ...]:
        return (e.order,)

    def judge(self, output: str) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Cascade:
    """Cheapest tier first; escalate when the answer's ``confidence_field`` is below
    ``min_confidence`` (invalid answers reroute under every strategy)."""

    confidence_field: str | None = None
    min_confidence: float = 0.7
    name: str = "cascade"

    def rank(self, e: Endpoint, prompt_tokens: int, max_output_tokens: int) -> tuple[float, ...]:
        return (round(cost_bound(e, prompt_tokens, max_output_tokens), 12),)

    def judge(self, output: str) -> str | None:
        if self.confidence_field is None:
            return None
        value: object = json.loads(output)
        for part in self.confidence_field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"the answer has no number at {self.confidence_field!r}"
        if value < self.min_confidence:
            return f"{self.confidence_field} {value:g} is below {self.min_confidence:g}"
        return None


def strategy_from_config(routing: RoutingConfig, answer_fields: Iterable[str] = ()) -> Strategy:
    """The ``routing.strategy`` of the config; ``answer_fields`` are the schema's top-level
    fields, against which ``routing.cascade.confidence_field`` is checked."""
    if routing.strategy == "ordered":
        return Ordered()
    if routing.strategy == "cheapest":
        return Cheapest()
    cascade = routing.cascade
    if cascade is None or cascade.confidence_field is None:
        return Cascade()
    fields = list(answer_fields)
    top = cascade.confidence_field.split(".")[0]
    if fields and top not in fields:
        raise ConfigError(
            f"routing.cascade.confidence_field: {cascade.confidence_field!r} is not a field "
            f"of the task's schema; expected one of: {', '.join(fields)}"
        )
    return Cascade(cascade.confidence_field, cascade.min_confidence)


class Router:
    """Filters and orders the endpoints a chunk may use, for the whole run.

    ``disable`` takes a provider out for the run; ``lower_ceiling`` (the budget's
    ``downgrade`` policy) keeps only endpoints cheaper than the one that no longer fit.
    """

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        self._disabled: set[str] = set()
        self._ceilings: list[Endpoint] = []

    def disable(self, provider: str) -> bool:
        """Stop routing to every model of ``provider``; True the first time (to log it once)."""
        if provider in self._disabled:
            return False
        self._disabled.add(provider)
        return True

    def is_disabled(self, provider: str) -> bool:
        return provider in self._disabled

    def lower_ceiling(self, endpoint: Endpoint) -> bool:
        """From now on route only to endpoints cheaper than ``endpoint``; True if new."""
        if endpoint in self._ceilings:
            return False
        self._ceilings.append(endpoint)
        return True

    def candidates(
        self,
        chunk: Chunk,
        *,
        prompt_tokens: int,
        max_output_tokens: int,
        strategy: Strategy | None = None,
    ) -> list[Endpoint]:
        """Allowed endpoints for ``chunk`` whose window fits, cheapest worst case first."""
        return self.plan(
            chunk,
            prompt_tokens=prompt_tokens,
            max_output_tokens=max_output_tokens,
            strategy=strategy,
        ).candidates

    def plan(
        self,
        chunk: Chunk,
        *,
        prompt_tokens: int,
        max_output_tokens: int,
        strategy: Strategy | None = None,
    ) -> Plan:
        """The chunk's candidates in ``strategy``'s order (default cheapest) and what
        preflight left out of its regions, with why."""
        order: Strategy = strategy or Cheapest()
        allowed: list[Endpoint] = []
        excluded: list[Exclusion] = []
        for e in self.endpoints:
            if e.region not in chunk.regions:
                continue
            reason = self._exclusion(e, prompt_tokens, max_output_tokens)
            if reason is None:
                allowed.append(e)
            else:
                excluded.append(Exclusion(e.key, reason))
        allowed.sort(key=lambda e: (order.rank(e, prompt_tokens, max_output_tokens), e.order))
        return Plan(allowed, excluded)

    def _exclusion(
        self, e: Endpoint, prompt_tokens: int, max_output_tokens: int
    ) -> ExclusionReason | None:
        if e.provider in self._disabled:
            return "disabled"
        if not e.structured_output:
            return "no_structured_output"
        if not fits(e, prompt_tokens, max_output_tokens):
            return "context_window"
        if self._ceilings:
            cost = cost_bound(e, prompt_tokens, max_output_tokens)
            if any(cost >= cost_bound(c, prompt_tokens, max_output_tokens) for c in self._ceilings):
                return "budget_downgrade"
        return None


def output_cap(e: Endpoint, max_output_tokens: int) -> int:
    """The max output tokens asked of ``e``: the task's cap, never above the model's."""
    return min(max_output_tokens, e.price.max_output_tokens)


def fits(e: Endpoint, prompt_tokens: int, max_output_tokens: int) -> bool:
    need = prompt_tokens + output_cap(e, max_output_tokens)
    return need <= e.price.context_window * CONTEXT_MARGIN


def cost_bound(e: Endpoint, prompt_tokens: int, max_output_tokens: int) -> float:
    return e.price.worst_case_usd(prompt_tokens, output_cap(e, max_output_tokens))


def reservation_usd(
    e: Endpoint, prompt_token_bound: int, max_output_tokens: int, *, batch: bool = False
) -> float:
    """The most one call to ``e`` can cost: every prompt token at the dearest input price
    (a cache write may cost more than fresh input), every output token used; at the batch
    API's prices for a request of a batch job."""
    p = e.price.batch() if batch else e.price
    input_price = max(p.input_per_mtok, p.cache_write_per_mtok or 0.0)
    return (prompt_token_bound * input_price + max_output_tokens * p.output_per_mtok) / 1e6
