"""Fault injection as plain decisions: the fault a chat request gets, and the ``Problem``
each error answer carries (an injected fault, a wrong key, a full quota, a refused format).

    >>> profile = EndpointProfile(fail_first=1, rate_429=0.5, api_key="sk-sim-secret-key")
    >>> choose_fault(profile, 0, 0.9), choose_fault(profile, 1, 0.2), choose_fault(profile, 1, 0.9)
    ('server_error', 'rate_limited', 'none')
    >>> key_problem(profile, "sk-sim-secret-key") is None, key_problem(profile, "").kind
    (True, 'auth')
    >>> key_problem(profile, "sk-wrong-key-1234").shown_key
    'sk-wr****1234'

Nothing here draws, sleeps or reads a request: the app (``app``) draws the uniform number
from the request's seeded ``random.Random``, reads the presented key with its ``Wire``, and
logs each error answer as ``FAULT_OF[problem.kind]``.
"""

from __future__ import annotations

import hmac

from pipeline.sim_profiles import EndpointProfile, Fault

from .state import Admission
from .wire import ChatCall, ErrorKind, Problem, mask_key

__all__ = [
    "ERROR_FAULTS",
    "FAULT_OF",
    "choose_fault",
    "format_problem",
    "injected_problem",
    "key_problem",
    "quota_problem",
]

#: The drawn faults, in the order their shares split the draw (429 and 500 first, as before).
_DRAWN: tuple[tuple[str, Fault], ...] = (
    ("rate_429", "rate_limited"),
    ("rate_500", "server_error"),
    ("rate_503", "overloaded"),
    ("rate_timeout", "timeout"),
    ("rate_drop", "dropped"),
    ("rate_truncated", "truncated"),
    ("rate_refusal", "refusal"),
)
#: Faults answered with an error body, and the kind of error each is.
ERROR_FAULTS: dict[Fault, ErrorKind] = {
    "rate_limited": "rate_limited",
    "server_error": "server_error",
    "overloaded": "overloaded",
    "auth": "auth",
    "bad_request": "bad_request",
}
#: The fault an error answer is logged as.
FAULT_OF: dict[ErrorKind, Fault] = {kind: fault for fault, kind in ERROR_FAULTS.items()} | {
    "not_found": "bad_request"
}


def choose_fault(profile: EndpointProfile, nth_request: int, draw: float) -> Fault:
    """The fault of the ``nth_request``-th admitted request, given its uniform ``draw``.

    >>> p = EndpointProfile(script=["dropped", "none"], fail_first=3, rate_503=0.5)
    >>> [choose_fault(p, n, 0.25) for n in range(4)], choose_fault(p, 4, 0.75)
    (['dropped', 'none', 'server_error', 'overloaded'], 'none')
    """
    if nth_request < len(profile.script):
        return profile.script[nth_request]
    if nth_request < profile.fail_first:
        return "server_error"
    for field, fault in _DRAWN:
        share: float = getattr(profile, field)
        if draw < share:
            return fault
        draw -= share
    return "none"


def injected_problem(
    fault: Fault, call: ChatCall, profile: EndpointProfile, presented_key: str
) -> Problem:
    """The error answer of an injected fault (one of ``ERROR_FAULTS``)."""
    if fault == "rate_limited":
        return Problem("rate_limited", model=call.model, retry_after_s=profile.retry_after_s)
    if fault == "auth":
        return Problem("auth", shown_key=mask_key(presented_key) if presented_key else None)
    if fault == "bad_request":
        return Problem("bad_request", "The simulator was scripted to refuse this request.")
    return Problem(ERROR_FAULTS[fault])


def key_problem(profile: EndpointProfile, presented: str) -> Problem | None:
    """An ``auth`` problem unless the request carries the profile's key."""
    if hmac.compare_digest(presented.encode(), (profile.api_key or "").encode()):
        return None
    if not presented:
        return Problem("auth")
    echo = profile.echo_key_in_errors
    return Problem("auth", shown_key=presented if echo else mask_key(presented), key_echoed=echo)


def format_problem(call: ChatCall) -> Problem:
    """The 500 a server gives a request shape it cannot handle (llama-cpp-python's server
    fails inside its handler on ``json_schema``), identical for every such request."""
    return Problem(
        "server_error",
        f"Internal Server Error: response_format type {call.response_format!r} is not "
        "supported by this server",
        model=call.model,
    )


def quota_problem(call: ChatCall, admission: Admission) -> Problem:
    """The 429 of a request over the ``rpm`` / ``tpm`` window, with what it exceeded."""
    quota, exceeded = admission.quota, admission.exceeded
    assert quota is not None and admission.retry_after_s is not None
    if exceeded == "tokens":
        limit, remaining, requested = quota.limit_tokens, quota.remaining_tokens, call.cost
    else:
        limit, remaining, requested = quota.limit_requests, quota.remaining_requests, 1
    used = None if limit is None or remaining is None else limit - remaining
    return Problem(
        "rate_limited",
        model=call.model,
        exceeded=exceeded,
        limit=limit,
        used=used,
        requested=requested,
        retry_after_s=admission.retry_after_s,
    )
