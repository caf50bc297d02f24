"""Policy: residency (where a chunk may go), budget (what a run may spend), routing (order),
and the dispatch settings and quota gates a config asks for."""

from pipeline.policy.breaker import DocumentBreaker
from pipeline.policy.budget import MONTH_WINDOW_S, BudgetGuard, Hold, Shortfall
from pipeline.policy.health import Disabled, EndpointHealth
from pipeline.policy.limits import EndpointGate
from pipeline.policy.residency import Decision, Residency
from pipeline.policy.routing import (
    Cascade,
    Cheapest,
    Endpoint,
    Exclusion,
    ExclusionReason,
    Ordered,
    Plan,
    Router,
    Strategy,
    cost_bound,
    endpoints_from_config,
    fits,
    output_cap,
    reservation_usd,
    strategy_from_config,
)
from pipeline.policy.settings import DispatchSettings, dispatch_settings, gates_from_config

__all__ = [
    "MONTH_WINDOW_S",
    "BudgetGuard",
    "Cascade",
    "Cheapest",
    "Decision",
    "Disabled",
    "DispatchSettings",
    "DocumentBreaker",
    "Endpoint",
    "EndpointGate",
    "EndpointHealth",
    "Exclusion",
    "ExclusionReason",
    "Hold",
    "Ordered",
    "Plan",
    "Residency",
    "Router",
    "Shortfall",
    "Strategy",
    "cost_bound",
    "dispatch_settings",
    "endpoints_from_config",
    "fits",
    "gates_from_config",
    "output_cap",
    "reservation_usd",
    "strategy_from_config",
]
