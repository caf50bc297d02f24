"""Policy: residency (where a chunk may go), budget (what a run may spend), routing (order)."""

from pipeline.policy.budget import BudgetGuard, Hold
from pipeline.policy.limits import EndpointGate
from pipeline.policy.residency import Decision, Residency
from pipeline.policy.routing import Endpoint, Router, cost_bound, endpoints_from_config, output_cap

__all__ = [
    "BudgetGuard",
    "Decision",
    "Endpoint",
    "EndpointGate",
    "Hold",
    "Residency",
    "Router",
    "cost_bound",
    "endpoints_from_config",
    "output_cap",
]
