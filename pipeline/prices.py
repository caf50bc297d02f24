"""The shipped price table and the price record the router and the ledger read.

    table = load_price_table()
    table["gpt-4.1-mini"].input_per_mtok     # 0.40

Prices are data (``pipeline/data/prices.csv``, one row per model with the date it was
priced); a model entry in ``docroute.yaml`` may override any field. A model that is in
neither place cannot be priced, and the config is refused: docroute never calls a model
whose cost it cannot count.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, replace
from importlib import resources

from pipeline.models import Usage


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens, plus the limits that decide whether a request fits."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float
    context_window: int
    max_output_tokens: int
    priced_at: str
    cache_write_per_mtok: float | None = None  # None: billed as fresh input
    batch_input_per_mtok: float | None = None
    """Input through the vendor's batch API (None: the model has no batch price, so docroute
    sends it no batch jobs)."""
    batch_output_per_mtok: float | None = None

    @property
    def batchable(self) -> bool:
        return self.batch_input_per_mtok is not None and self.batch_output_per_mtok is not None

    def batch(self) -> Price:
        """The prices of a batch job's requests. Cached input and cache writes get the same
        discount as fresh input (the vendors' batch discount applies to every token)."""
        if self.batch_input_per_mtok is None or self.batch_output_per_mtok is None:
            raise ValueError("this model has no batch price")
        ratio = self.batch_input_per_mtok / self.input_per_mtok if self.input_per_mtok else 0.0
        write = self.cache_write_per_mtok
        return replace(
            self,
            input_per_mtok=self.batch_input_per_mtok,
            output_per_mtok=self.batch_output_per_mtok,
            cached_input_per_mtok=self.cached_input_per_mtok * ratio,
            cache_write_per_mtok=None if write is None else write * ratio,
        )

    def cost_usd(self, usage: Usage) -> float:
        """What an attempt cost, from the usage the provider reported."""
        fresh = max(usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens, 0)
        write_price = self.cache_write_per_mtok
        if write_price is None:
            write_price = self.input_per_mtok
        return (
            fresh * self.input_per_mtok
            + usage.cached_input_tokens * self.cached_input_per_mtok
            + usage.cache_write_tokens * write_price
            + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000

    def worst_case_usd(self, input_tokens: int, output_tokens: int) -> float:
        """The most a call can cost: every input token uncached, every output token used."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


@functools.cache
def load_price_table() -> dict[str, Price]:
    """The shipped table, keyed by model id."""
    text = resources.files("pipeline").joinpath("data/prices.csv").read_text(encoding="utf-8")
    table: dict[str, Price] = {}
    for row in csv.DictReader(text.splitlines()):
        table[row["model"]] = Price(
            input_per_mtok=float(row["input_per_mtok"]),
            output_per_mtok=float(row["output_per_mtok"]),
            cached_input_per_mtok=float(row["cached_input_per_mtok"]),
            context_window=int(row["context_window"]),
            max_output_tokens=int(row["max_output_tokens"]),
            priced_at=row["priced_at"],
            cache_write_per_mtok=_optional(row["cache_write_per_mtok"]),
            batch_input_per_mtok=_optional(row["batch_input_per_mtok"]),
            batch_output_per_mtok=_optional(row["batch_output_per_mtok"]),
        )
    return table


def _optional(cell: str | None) -> float | None:
    return float(cell) if cell else None
