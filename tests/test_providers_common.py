"""What every adapter shares: the dispatch harness the adapter tests drive, the HTTP-status
mapping onto the error tree, and the quota-header readers.

``Harness`` runs the real dispatcher over real adapters (official SDKs, strict response
validation) against the simulator on loopback; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline import errors
from pipeline.dispatch import Dispatcher
from pipeline.models import Chunk, LedgerEntry, Result
from pipeline.policy import BudgetGuard, DispatchSettings, Endpoint, Router
from pipeline.prices import Price
from pipeline.providers import ChatRequest, EndpointSettings, Provider, build_provider
from pipeline.providers.errmap import Fields, by_status, mentions_context_overflow
from pipeline.providers.headers import anthropic_limits, seconds_until
from pipeline.simulator import EndpointProfile
from schemas import get_schema

TEXT = (
    "Brightwell Logistics GmbH and Nordhafen AG signed a services agreement on 3 March 2025 "
    "in Hamburg. Brightwell will provide warehousing for EUR 48,000 per year. Either party may "
    "terminate with 90 days notice. Personal data is processed under the GDPR."
)
KEY = "sk-test-key-000"


def complete_once(provider: Provider, request: ChatRequest) -> Any:
    """One call through ``provider``, then closed: the ProviderReply, or the ProviderError."""

    async def go() -> Any:
        try:
            return await provider.complete(request)
        except errors.ProviderError as exc:
            return exc
        finally:
            await provider.aclose()

    return asyncio.run(go())


def summary_request(model: str, mode: str = "json_schema") -> ChatRequest:
    """A ``chunk_summary`` request for ``TEXT``, as dispatch builds it (first attempt)."""
    spec = get_schema("chunk_summary")
    return ChatRequest(
        model=model,
        messages=[
            {"role": "system", "content": spec.instructions},
            {"role": "user", "content": TEXT},
        ],
        schema_name=spec.name,
        json_schema=spec.json_schema(),
        max_output_tokens=600,
        temperature=0.0,
        structured_mode=mode,
    )


def chunk(text: str = TEXT, n: int = 0) -> Chunk:
    return Chunk(
        f"chunk-{n}", "doc", "eu/a.txt", n, 0, len(text), len(text) // 4, text, ("eu",), "eu/**"
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Spec:
    """One endpoint of a test: its adapter kind and the simulator profile behind it."""

    name: str
    kind: str
    profile: EndpointProfile = field(default_factory=EndpointProfile)
    price: Price = field(default_factory=lambda: Price(1.0, 4.0, 0.1, 128_000, 4096, "t"))
    preset: str | None = None
    structured_mode: str = "json_schema"
    timeout_s: float = 10.0
    api_key: str | None = None  # what the adapter presents (default: the profile's key)


class Harness:
    """The dispatcher over ``specs`` (cheapest first in list order), sleeping in a list."""

    def __init__(self, simulator: Any, specs: Sequence[Spec], **settings: Any) -> None:
        self.sim = simulator
        self.delays: list[float] = []
        self.providers: dict[str, Provider] = {}
        endpoints = []
        for i, spec in enumerate(specs):
            url = simulator.add_endpoint(spec.name, spec.profile)
            key = spec.api_key or spec.profile.api_key or KEY
            self.providers[spec.name] = build_provider(
                spec.kind,
                EndpointSettings(
                    name=spec.name,
                    base_url=url,
                    api_key=SecretStr(key),
                    timeout_s=spec.timeout_s,
                    strict_validation=True,
                ),
                preset=spec.preset,
            )
            endpoints.append(
                Endpoint(
                    spec.name,
                    spec.kind,
                    "eu",
                    f"model-{spec.name}",
                    spec.price,
                    True,
                    i,
                    structured_mode=spec.structured_mode,
                )
            )
        schema = get_schema("chunk_summary")

        async def sleep(s: float) -> None:
            self.delays.append(s)

        self.dispatcher = Dispatcher(
            run_id="run-test",
            router=Router(endpoints),
            budget=BudgetGuard(10.0),
            providers=self.providers,
            schema=schema,
            settings=DispatchSettings(
                instructions=schema.instructions, max_output_tokens=600, **settings
            ),
            sleep=sleep,
        )

    def run(self, chunks: Sequence[Chunk] = ()) -> tuple[list[Result], list[LedgerEntry]]:
        async def go() -> Any:
            try:
                return await self.dispatcher.run_batch(list(chunks) or [chunk()])
            finally:
                for p in self.providers.values():
                    await p.aclose()

        out = asyncio.run(go())
        return out.results, out.ledger


#: The fault matrix every adapter answers: fault → (ledger outcome, next step).
#: "retry": the same endpoint again after a backoff; "repair": the same endpoint with a
#: repair prompt; "reroute": the next candidate.
FAULTS: dict[str, tuple[str, str]] = {
    "rate_limited": ("rate_limited", "retry"),
    "server_error": ("server_error", "retry"),
    "overloaded": ("overloaded", "retry"),
    # No answer after the request left: booked "uncertain" at the reserved worst case.
    "timeout": ("uncertain", "retry"),
    "dropped": ("uncertain", "retry"),
    "truncated": ("output_truncated", "more_room"),
    "invalid": ("invalid_output", "repair"),
    "refusal": ("invalid_output", "repair"),
    "auth": ("auth_error", "reroute"),
    "bad_request": ("bad_request", "reroute"),
}

#: The HTTP status each fault is ledgered with (``None``: no response arrived). A billed
#: 200 answer that failed validation (truncated, schema-invalid, refused, or a prose
#: refusal where the wire has no refusal field) keeps its 200. Anthropic overrides
#: ``overloaded`` with its own 529.
STATUS: dict[str, int | None] = {
    "rate_limited": 429,
    "server_error": 500,
    "overloaded": 503,
    "timeout": None,
    "dropped": None,  # connection_error, not timeout, even through aiohttp (errmap.timed_out)
    "truncated": 200,
    "invalid": 200,
    "refusal": 200,
    "auth": 401,
    "bad_request": 400,
}


def run_fault(
    simulator: Any,
    kind: str,
    fault: str,
    *,
    protocol: str,
    preset: str | None = None,
    structured_mode: str = "json_schema",
) -> tuple[Harness, Result, list[LedgerEntry]]:
    """A primary endpoint whose first request gets ``fault`` (then answers), a backup."""
    profile = EndpointProfile(
        protocol=protocol,  # type: ignore[arg-type]
        script=[fault, "none"],  # type: ignore[list-item]
        retry_after_s=7,
        hang_s=3,
    )
    h = Harness(
        simulator,
        [
            Spec(
                "primary",
                kind,
                profile,
                preset=preset,
                structured_mode=structured_mode,
                timeout_s=0.5 if fault == "timeout" else 10.0,
            ),
            Spec("backup", kind, EndpointProfile(protocol=protocol), preset=preset),  # type: ignore[arg-type]
        ],
    )
    (result,), ledger = h.run()
    return h, result, ledger


def check_fault(
    h: Harness, result: Result, ledger: list[LedgerEntry], fault: str, http_status: int | None
) -> None:
    """The first attempt is ledgered as the fault's outcome, and the next step is right."""
    outcome, step = FAULTS[fault]
    first, second = ledger[0], ledger[1]
    assert (first.provider, first.outcome, first.http_status) == ("primary", outcome, http_status)
    assert first.error, "the ledger says why the attempt failed"
    assert result.status == "succeeded", result
    assert second.outcome == "ok" and len(ledger) == 2
    assert len(h.sim.requests()) == 2, "one HTTP attempt per call: SDK retries are off"
    if step == "reroute":
        assert second.provider == "backup" and result.provider == "backup"
        assert h.delays == []
        return
    assert second.provider == "primary" and result.provider == "primary"
    repaired = [r.is_repair for r in h.sim.requests("primary")]
    if step in ("repair", "more_room"):
        # A cut-off answer is asked again with more room, not with a repair prompt.
        assert repaired[-1] is (step == "repair") and h.delays == []
        assert first.cost_usd > 0, "an unusable answer is billed"
    elif outcome == "uncertain":
        assert repaired[-1] is False and len(h.delays) == 1
        assert first.cost_usd == first.reserved_usd > 0, "it may have been billed"
        assert (first.error or "").startswith("timeout" if fault == "timeout" else "connection")
    else:
        assert repaired[-1] is False and len(h.delays) == 1
        assert first.cost_usd == 0
    if fault == "rate_limited":
        assert h.delays == [7.0], "retry-after wins over the backoff"
    get_schema("chunk_summary").model.model_validate_json(result.output or "")


def check_fail(simulator: Any, kind: str, protocol: str, preset: str | None = None) -> None:
    """One endpoint that keeps failing: retried, then the chunk fails with the outcome."""
    profile = EndpointProfile(protocol=protocol, script=["server_error"] * 5)  # type: ignore[arg-type]
    h = Harness(simulator, [Spec("only", kind, profile, preset=preset)], retries_per_endpoint=2)
    (result,), ledger = h.run()
    assert [e.outcome for e in ledger] == ["server_error"] * 3
    assert len(h.sim.requests("only")) == 3, "one HTTP attempt per call: SDK retries are off"
    assert (result.status, result.reason, result.attempts) == ("failed", "server_error", 3)
    assert result.output is None and len(h.delays) == 2


def check_success(h: Harness, name: str) -> LedgerEntry:
    """One ``ok`` attempt whose ledgered tokens are what the simulator served."""
    (result,), (entry,) = h.run()
    assert result.status == "succeeded" and result.provider == name
    get_schema("chunk_summary").model.model_validate_json(result.output or "")
    prompt, completion = h.sim.tokens_served(name)
    assert prompt > 0 and completion > 0
    assert (entry.input_tokens, entry.output_tokens) == (prompt, completion)
    assert entry.outcome == "ok" and entry.http_status == 200
    assert entry.model_reported == f"model-{name}"
    assert entry.request_id
    return entry


# -- the shared status mapping ---------------------------------------------------------

F = Fields("ep", "m", http_status=None)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, errors.RateLimited),
        (503, errors.Overloaded),
        (529, errors.Overloaded),
        (500, errors.ServerError),
        (502, errors.ServerError),
        (408, errors.Timeout),
        (401, errors.AuthError),
        (403, errors.AuthError),
        (400, errors.BadRequest),
        (404, errors.BadRequest),
        (422, errors.BadRequest),
    ],
)
def test_status_maps_onto_the_error_tree(status: int, kind: type) -> None:
    exc = by_status(status, "m", F, headers={"retry-after": "3"})
    assert type(exc) is kind
    assert exc.provider == "ep" and exc.model == "m"
    if kind in (errors.RateLimited, errors.Overloaded):
        assert exc.retry_after == 3.0


def test_context_overflow_is_read_from_code_or_message() -> None:
    assert mentions_context_overflow(None, "context_length_exceeded")
    assert mentions_context_overflow("prompt is too long: 210000 tokens > 200000 maximum")
    assert mentions_context_overflow(
        "Prompt contains 40000 tokens, too large for model with 32768 maximum context length"
    )
    assert mentions_context_overflow(
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    )
    assert not mentions_context_overflow("messages: field required")
    exc = by_status(400, "too long", F, context_exceeded=True)
    assert type(exc) is errors.ContextExceeded


def test_anthropic_reset_times_become_seconds_from_now() -> None:
    now = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    info = anthropic_limits(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2025-06-01T12:00:30Z",
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "39000",
            "anthropic-ratelimit-tokens-reset": "2025-06-01T12:00:01.5+00:00",
        },
        now=now,
    )
    assert info is not None
    assert (info.limit_requests, info.remaining_requests, info.reset_requests_s) == (50, 49, 30.0)
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens_s) == (40000, 39000, 1.5)
    assert seconds_until("2025-06-01T11:59:00Z", now) == 0.0, "a past reset is now"
    assert seconds_until("soon", now) is None
    assert anthropic_limits({"x-ratelimit-limit-requests": "5"}) is None
