"""What the dispatcher is told by the config: its settings, and one quota gate per provider.

    settings = dispatch_settings(cfg, get_schema(cfg.task.schema_name))
    settings.strategy                  # Cheapest(), Ordered() or Cascade(…): routing.strategy
    gates = gates_from_config(cfg)     # {"mistral-eu": EndpointGate(rpm=…, tpm=…), …}
    Dispatcher(..., settings=settings, gates=gates)

``DispatchSettings`` is plain data, so tests build it directly; the builders here are the
one place where ``task``, ``routing`` and ``budget`` of a :class:`pipeline.config.Config`
become dispatch settings. The gates are built once per run and shared by its batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pipeline.config import Config
from pipeline.policy.limits import EndpointGate
from pipeline.policy.routing import Cheapest, Strategy, strategy_from_config

if TYPE_CHECKING:
    from schemas import SchemaSpec

__all__ = ["DispatchSettings", "dispatch_settings", "gates_from_config"]


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """How the dispatcher treats every chunk: prompt, caps, retries, strategy, budget policy."""

    instructions: str
    max_output_tokens: int
    temperature: float | None = 0.0
    max_attempts: int = 6
    repair_attempts: int = 1
    retries_per_endpoint: int = 2
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    concurrency: int = 32
    cooldown_after: int = 5
    cooldown_s: float = 30.0
    strategy: Strategy = field(default_factory=Cheapest)
    """Order of the candidates, and whether an answer is good enough (``routing.strategy``)."""
    on_exhausted: Literal["stop", "downgrade"] = "stop"
    """What a reservation that no longer fits does (``budget.on_exhausted``)."""
    document_failures_max: int = 5
    """Chunks of one document failing the same way before the rest of it is skipped."""
    identical_errors_max: int = 3
    """Distinct chunks an endpoint that never answered gives one identical error before it
    is disabled for the run (``pipeline.policy.health``)."""


def dispatch_settings(cfg: Config, schema: SchemaSpec) -> DispatchSettings:
    """The dispatcher's settings for a run of ``cfg`` on ``schema``; ``task.instructions``
    wins over the schema's own prompt."""
    r = cfg.routing
    return DispatchSettings(
        instructions=cfg.task.instructions or schema.instructions,
        max_output_tokens=cfg.task.max_output_tokens,
        temperature=cfg.task.temperature,
        max_attempts=r.max_attempts,
        repair_attempts=r.repair_attempts,
        retries_per_endpoint=r.retries_per_endpoint,
        backoff_initial_s=r.backoff_initial_s,
        backoff_max_s=r.backoff_max_s,
        concurrency=r.concurrency,
        cooldown_after=r.cooldown_after_failures,
        cooldown_s=r.cooldown_s,
        strategy=strategy_from_config(r, schema.model.model_fields),
        on_exhausted=cfg.budget.on_exhausted,
        document_failures_max=r.document_failures_max,
        identical_errors_max=r.identical_errors_max,
    )


def gates_from_config(cfg: Config) -> dict[str, EndpointGate]:
    """One quota/cooldown gate per provider, shared by all batches of the run."""
    r = cfg.routing
    return {
        p.name: EndpointGate(
            rpm=p.rate_limits.rpm,
            tpm=p.rate_limits.tpm,
            max_concurrency=p.rate_limits.max_concurrency,
            cooldown_after=r.cooldown_after_failures,
            cooldown_s=r.cooldown_s,
        )
        for p in cfg.providers
    }
