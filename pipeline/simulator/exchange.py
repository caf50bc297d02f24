"""What one chat request gets, apart from HTTP: its draws, its answer, and its log record.

Shared by the synchronous routes (``app``) and the batch jobs (``batch_lines``), so that a
request answered inside a batch gets exactly what the same request sent alone would get:

    >>> state = SimulatorState()
    >>> state.set_profile("eu", EndpointProfile(seed=7))
    >>> draws = draw(state, "eu", EndpointProfile(seed=7), b'{"model": "m"}')
    >>> draws.nth_request, len(draws.digest), 0 <= draws.fault_draw < 1
    (0, 64, True)

``draw`` counts the request (``SimulatorState.arrive``) and seeds a ``random.Random`` with
``(profile.seed, endpoint, sha256(body), n-th time this body came)``; the latency, the fault
draw and the invalid draw come from it in that order, then the answer's own draws.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from pipeline.sim_profiles import EndpointProfile, Fault, RequestRecord

from .answers import answer_for
from .schema_gen import SchemaError
from .state import SimulatorState
from .wire import Answer, BadRequest, ChatCall, Problem, digest_of, partial_call_fields

__all__ = ["Draws", "draw", "generate", "invalid_by_profile", "record_of"]


@dataclass(frozen=True, slots=True)
class Draws:
    """The seeded draws of one admitted request, and the digest its ids derive from."""

    nth_request: int
    digest: str
    latency_ms: float
    fault_draw: float
    invalid_draw: float
    rng: random.Random


def draw(state: SimulatorState, name: str, profile: EndpointProfile, raw: bytes) -> Draws:
    """Count an admitted request of endpoint ``name`` and draw its latency and faults."""
    body_sha256 = hashlib.sha256(raw).hexdigest()
    arrival = state.arrive(name, body_sha256)
    draw_key = f"{profile.seed}|{name}|{body_sha256}|{arrival.nth_body}"
    rng = random.Random(draw_key)
    latency_ms, fault_draw, invalid_draw = (
        rng.uniform(*profile.latency_ms),
        rng.random(),
        rng.random(),
    )
    digest = digest_of(draw_key)
    return Draws(arrival.nth_request, digest, latency_ms, fault_draw, invalid_draw, rng)


def invalid_by_profile(
    state: SimulatorState,
    name: str,
    profile: EndpointProfile,
    call: ChatCall,
    fault: Fault,
    invalid_draw: float,
) -> bool:
    """Whether the profile breaks this answer's schema (``invalid_first``, ``invalid_rate``)."""
    if call.schema is None or fault == "refusal":
        return False
    nth_answer = state.next_answer(name)
    return nth_answer < profile.invalid_first or invalid_draw < profile.invalid_rate


def generate(
    call: ChatCall, fault: Fault, invalid: bool, rng: random.Random
) -> tuple[Answer, Fault] | Problem:
    """The answer and the fault it is logged as, or the 400 of a schema nobody can fill."""
    try:
        answer = answer_for(call, fault, invalid, rng)
    except SchemaError as exc:
        return BadRequest(f"Invalid schema: {exc}", "response_format").problem(call.model)
    if fault == "none" and answer.finish == "length":
        fault = "truncated"
    elif fault == "none" and invalid:
        fault = "invalid"
    return answer, fault


def record_of(
    name: str,
    call: ChatCall | None,
    raw: bytes,
    received_at: float,
    status: int,
    fault: Fault,
    completion: int = 0,
    batch_id: str | None = None,
) -> RequestRecord:
    """The log record of a request (``call`` is None when its body could not be read)."""
    if call is not None:
        model, text = call.model, call.first_user_text
    else:
        model, text = partial_call_fields(raw)
    return RequestRecord(
        endpoint=name,
        model=model,
        received_at=received_at,
        status=status,
        fault=fault,
        prompt_tokens=call.prompt_tokens if call else 0,
        completion_tokens=completion,
        prompt_sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        is_repair=call.is_repair if call else False,
        batch_id=batch_id,
    )
