"""Candidate endpoints for a chunk, cheapest first, never outside its regions.

    router = Router(endpoints_from_config(cfg))
    router.candidates(chunk, prompt_tokens=900, max_output_tokens=1024)

An ``Endpoint`` is one model at one provider: the capability record the router reads
(region, prices, context window, structured output). The router never looks at a
provider's kind or name to decide anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from pipeline.config import Config, ModelConfig
from pipeline.errors import ConfigError
from pipeline.models import Chunk
from pipeline.prices import Price, load_price_table

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
                    structured_mode=m.structured_mode,
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
    )


def _pick(override: T | None, default: T) -> T:
    return default if override is None else override


class Router:
    """Orders the endpoints a chunk may use. ``disable`` takes an endpoint out for the run."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        self._disabled: set[str] = set()

    def disable(self, provider: str) -> bool:
        """Stop routing to every model of ``provider``; True the first time (to log it once)."""
        if provider in self._disabled:
            return False
        self._disabled.add(provider)
        return True

    def is_disabled(self, provider: str) -> bool:
        return provider in self._disabled

    def candidates(
        self, chunk: Chunk, *, prompt_tokens: int, max_output_tokens: int
    ) -> list[Endpoint]:
        """Allowed endpoints for ``chunk`` whose window fits, cheapest worst case first."""
        allowed = [
            e
            for e in self.endpoints
            if e.region in chunk.regions
            and e.provider not in self._disabled
            and e.structured_output
            and fits(e, prompt_tokens, max_output_tokens)
        ]
        return sorted(
            allowed, key=lambda e: (cost_bound(e, prompt_tokens, max_output_tokens), e.order)
        )


def output_cap(e: Endpoint, max_output_tokens: int) -> int:
    """The max output tokens asked of ``e``: the task's cap, never above the model's."""
    return min(max_output_tokens, e.price.max_output_tokens)


def fits(e: Endpoint, prompt_tokens: int, max_output_tokens: int) -> bool:
    need = prompt_tokens + output_cap(e, max_output_tokens)
    return need <= e.price.context_window * CONTEXT_MARGIN


def cost_bound(e: Endpoint, prompt_tokens: int, max_output_tokens: int) -> float:
    return e.price.worst_case_usd(prompt_tokens, output_cap(e, max_output_tokens))
