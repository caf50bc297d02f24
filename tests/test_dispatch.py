"""The dispatcher against the simulator through the real openai SDK: each fault kind ends in the
right ledger outcome and the right next step (retry, repair, reroute, fail)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pytest

from pipeline.dispatch import Dispatcher
from pipeline.models import Chunk, LedgerEntry, Result
from pipeline.policy import BudgetGuard, DispatchSettings, Endpoint, Ordered, Router
from pipeline.prices import Price
from pipeline.providers import EndpointSettings, build_provider
from pipeline.simulator import EndpointProfile
from schemas import get_schema

TEXT = (
    "Brightwell Logistics GmbH and Nordhafen AG signed a services agreement on 3 March 2025 "
    "in Hamburg. Brightwell will provide warehousing for EUR 48,000 per year. Either party may "
    "terminate with 90 days notice. Personal data is processed under the GDPR."
)


def _chunk(
    regions: tuple[str, ...] = ("eu",), text: str = TEXT, n: int = 0, doc: str = "doc"
) -> Chunk:
    return Chunk(
        f"chunk-{n}", doc, "eu/a.txt", n, 0, len(text), len(text) // 4, text, regions, "eu/**"
    )


def _endpoint(name: str, region: str, inp: float, order: int, max_output: int = 4096) -> Endpoint:
    return Endpoint(
        name,
        "openai",
        region,
        f"model-{name}",
        Price(inp, inp * 4, inp, 128_000, max_output, "t"),
        True,
        order,
    )


class Harness:
    def __init__(
        self,
        simulator: Any,
        specs: Sequence[tuple[str, str, float, EndpointProfile]],
        cap: float = 10.0,
        document_cap: float | None = None,
        timeout_s: float = 10,
        max_output: int = 4096,
        **settings: Any,
    ) -> None:
        self.sim = simulator
        self.delays: list[float] = []
        providers = {}
        endpoints = []
        for i, (name, region, price, profile) in enumerate(specs):
            url = simulator.add_endpoint(name, profile)
            key = profile.api_key or "sk-test-key-000"
            from pydantic import SecretStr

            providers[name] = build_provider(
                "openai",
                EndpointSettings(
                    name=name,
                    base_url=url,
                    api_key=SecretStr(key),
                    timeout_s=timeout_s,
                    strict_validation=True,
                ),
            )
            endpoints.append(_endpoint(name, region, price, i, max_output))
        self.budget = BudgetGuard(cap, document_cap_usd=document_cap)

        async def sleep(s: float) -> None:
            self.delays.append(s)

        spec = get_schema("chunk_summary")
        self.dispatcher = Dispatcher(
            run_id="run-test",
            router=Router(endpoints),
            budget=self.budget,
            providers=providers,
            schema=spec,
            settings=DispatchSettings(
                instructions=spec.instructions,
                **({"backoff_initial_s": 0.5, "max_output_tokens": 600} | settings),
            ),
            sleep=sleep,
        )
        self.providers = providers

    def run(
        self, chunks: Sequence[Chunk], on_entry: Any = None
    ) -> tuple[list[Result], list[LedgerEntry]]:
        async def go() -> Any:
            try:
                return await self.dispatcher.run_batch(chunks, on_entry=on_entry)
            finally:
                for p in self.providers.values():
                    await p.aclose()

        out = asyncio.run(go())
        return out.results, out.ledger


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_success_stores_validated_json_and_bills_reported_usage(simulator: Any) -> None:
    h = Harness(simulator, [("eu-a", "eu", 0.1, EndpointProfile())])
    (result,), (entry,) = h.run([_chunk()])
    assert result.status == "succeeded" and result.provider == "eu-a" and result.attempts == 1
    get_schema("chunk_summary").model.model_validate_json(result.output)
    prompt, completion = simulator.tokens_served("eu-a")
    assert (entry.input_tokens, entry.output_tokens) == (prompt, completion)
    assert entry.cost_usd == pytest.approx((prompt * 0.1 + completion * 0.4) / 1e6)
    assert entry.reserved_usd >= entry.cost_usd
    assert entry.outcome == "ok" and entry.model_reported == "model-eu-a"


def test_invalid_answer_is_repaired_once_then_rerouted(simulator: Any) -> None:
    h = Harness(
        simulator,
        [
            ("eu-cheap", "eu", 0.05, EndpointProfile(invalid_first=2)),
            ("eu-good", "eu", 0.4, EndpointProfile()),
        ],
    )
    (result,), ledger = h.run([_chunk()])
    assert [(e.provider, e.outcome) for e in ledger] == [
        ("eu-cheap", "invalid_output"),
        ("eu-cheap", "invalid_output"),
        ("eu-good", "ok"),
    ]
    assert [r.is_repair for r in simulator.requests("eu-cheap")] == [False, True]
    assert result.status == "succeeded" and result.provider == "eu-good" and result.attempts == 3
    assert result.cost_usd == pytest.approx(sum(e.cost_usd for e in ledger))
    assert all(e.cost_usd > 0 for e in ledger), "invalid answers are billed too"


def test_transient_errors_back_off_and_retry_the_same_endpoint(simulator: Any) -> None:
    h = Harness(
        simulator,
        [
            ("eu-a", "eu", 0.1, EndpointProfile(fail_first=2)),
            ("eu-b", "eu", 0.2, EndpointProfile()),
        ],
    )
    (result,), ledger = h.run([_chunk()])
    assert [(e.provider, e.outcome, e.http_status) for e in ledger] == [
        ("eu-a", "server_error", 500),
        ("eu-a", "server_error", 500),
        ("eu-a", "ok", 200),
    ]
    assert result.provider == "eu-a"
    assert len(h.delays) == 2 and h.delays[1] > h.delays[0] * 0.9


def test_rate_limit_honours_retry_after_then_reroutes(simulator: Any) -> None:
    h = Harness(
        simulator,
        [
            ("eu-a", "eu", 0.1, EndpointProfile(rate_429=1.0, retry_after_s=7)),
            ("eu-b", "eu", 0.2, EndpointProfile()),
        ],
        retries_per_endpoint=2,
    )
    (result,), ledger = h.run([_chunk()])
    assert [e.outcome for e in ledger] == ["rate_limited", "rate_limited", "rate_limited", "ok"]
    assert h.delays == [7.0, 7.0]
    assert all(e.cost_usd == 0 for e in ledger[:3])
    assert result.status == "succeeded" and result.provider == "eu-b"


def test_every_eu_endpoint_down_fails_without_touching_the_us(simulator: Any) -> None:
    h = Harness(
        simulator,
        [
            ("eu-a", "eu", 0.1, EndpointProfile(rate_500=1.0)),
            ("us-a", "us", 0.01, EndpointProfile()),
            ("eu-b", "eu", 0.2, EndpointProfile(rate_500=1.0)),
        ],
        retries_per_endpoint=1,
    )
    chunks = [_chunk(n=i) for i in range(5)]
    results, ledger = h.run(chunks)
    assert {r.status for r in results} == {"failed"}
    # Both keep failing the same way: they may be disabled for the run before the end.
    assert {r.reason for r in results} <= {"server_error", "endpoint_disabled"}
    assert simulator.requests("us-a") == []
    assert {e.region for e in ledger} == {"eu"}


def test_no_route_makes_no_call_and_says_why(simulator: Any) -> None:
    h = Harness(simulator, [("eu-a", "eu", 0.1, EndpointProfile())])
    (result,), (entry,) = h.run([_chunk(regions=("ch",))])
    assert (result.status, result.reason, result.attempts) == ("failed", "no_route", 0)
    assert entry.outcome == "no_route" and entry.cost_usd == 0 and entry.provider is None
    assert "ch" in result.error
    assert simulator.requests() == []


def test_auth_failure_disables_the_provider_and_reroutes(simulator: Any) -> None:
    h = Harness(
        simulator,
        [
            ("eu-a", "eu", 0.1, EndpointProfile(api_key="sk-the-right-key-123")),
            ("eu-b", "eu", 0.2, EndpointProfile()),
        ],
        concurrency=1,
    )  # one at a time: calls already in flight when the 401 lands would each see it
    # eu-a's adapter presents the right key; break it by presenting another one.
    h.providers["eu-a"] = build_provider(
        "openai",
        EndpointSettings(
            name="eu-a",
            base_url=f"{simulator.url}/eu-a/v1",
            api_key=__import__("pydantic").SecretStr("sk-wrong-key-456"),
            timeout_s=10,
            strict_validation=True,
        ),
    )
    h.dispatcher.providers = h.providers
    results, ledger = h.run([_chunk(n=i) for i in range(3)])
    assert all(r.status == "succeeded" and r.provider == "eu-b" for r in results)
    auth = [e for e in ledger if e.outcome == "auth_error"]
    assert len(auth) == 1 and auth[0].http_status == 401, "after one 401 the provider is disabled"


def test_budget_too_small_skips_without_calling(simulator: Any) -> None:
    h = Harness(simulator, [("eu-a", "eu", 100.0, EndpointProfile())], cap=0.001)
    (result,), (entry,) = h.run([_chunk()])
    assert (result.status, result.reason, result.attempts) == ("skipped", "budget_exhausted", 0)
    assert entry.outcome == "budget_exhausted" and entry.cost_usd == 0
    assert simulator.requests() == []


def test_spend_never_exceeds_cap_with_many_calls_in_flight(simulator: Any) -> None:
    profile = EndpointProfile(latency_ms=(20, 60))
    h = Harness(simulator, [("eu-a", "eu", 1.0, profile)], cap=0.05, concurrency=200)
    chunks = [_chunk(text=f"{TEXT} Copy {i}.", n=i) for i in range(400)]
    results, ledger = h.run(chunks)
    spend = sum(e.cost_usd for e in ledger)
    assert spend <= 0.05
    statuses = {r.status for r in results}
    assert statuses == {"succeeded", "skipped"}, statuses
    assert spend > 0.04, f"the cap should be mostly used, got {spend}"
    served = {r.prompt_sha256 for r in simulator.requests()}
    by_id = {c.chunk_id: c for c in chunks}
    for r in results:
        was_sent = _sha(by_id[r.chunk_id].text) in served
        assert was_sent == (r.status == "succeeded"), (r.chunk_id, r.status)
    assert len(results) == len({r.chunk_id for r in results}) == 400


def _excluded(result: Result) -> list[tuple[str, str]]:
    return [(x["endpoint"], x["reason"]) for x in json.loads(result.excluded or "[]")]


def _copies(n: int, start: int = 0, doc: str = "doc") -> list[Chunk]:
    return [_chunk(text=f"{TEXT} Copy {i}.", n=i, doc=doc) for i in range(start, start + n)]


DEAR_FIRST = [
    ("eu-dear", "eu", 5.0, EndpointProfile()),
    ("eu-cheap", "eu", 0.05, EndpointProfile()),
]


def test_on_exhausted_stop_skips_when_the_first_choice_does_not_fit(simulator: Any) -> None:
    h = Harness(simulator, DEAR_FIRST, cap=0.01, strategy=Ordered())  # dear's worst case > cap
    results, ledger = h.run(_copies(5))
    assert {(r.status, r.reason) for r in results} == {("skipped", "budget_exhausted")}
    assert simulator.requests() == [] and {e.outcome for e in ledger} == {"budget_exhausted"}


def test_on_exhausted_downgrade_moves_to_cheaper_models_under_a_ceiling(simulator: Any) -> None:
    h = Harness(simulator, DEAR_FIRST, cap=0.01, strategy=Ordered(), on_exhausted="downgrade")
    first, ledger_1 = h.run(_copies(5))
    assert {(r.status, r.provider) for r in first} == {("succeeded", "eu-cheap")}
    assert all(_excluded(r) == [("eu-dear/model-eu-dear", "budget_downgrade")] for r in first)
    assert {e.outcome for e in ledger_1} == {"ok"}, "a downgrade that works is no refusal"
    # From then on the run routes under the ceiling: dear is left out before any reservation.
    later, _ = h.run(_copies(5, start=5))
    assert all(_excluded(r) == [("eu-dear/model-eu-dear", "budget_downgrade")] for r in later)
    assert simulator.requests("eu-dear") == []
    assert h.budget.spent_usd <= 0.01


def test_downgrade_stays_within_the_cap_when_the_cheaper_models_run_out_too(
    simulator: Any,
) -> None:
    h = Harness(simulator, DEAR_FIRST, cap=0.0006, strategy=Ordered(), on_exhausted="downgrade")
    results, ledger = h.run(_copies(60))
    spend = sum(e.cost_usd for e in ledger)
    assert spend <= 0.0006
    assert {r.status for r in results} == {"succeeded", "skipped"}
    assert {r.reason for r in results if r.status == "skipped"} == {"budget_exhausted"}
    assert simulator.requests("eu-dear") == []
    assert len(results) == len({r.chunk_id for r in results}) == 60


def test_document_cap_holds_per_document_and_leaves_other_documents_alone(
    simulator: Any,
) -> None:
    # A reservation bounds schema and protocol overhead too (about $0.0045 here): the cap
    # holds a few of them, so a small document's three chunks always fit.
    h = Harness(
        simulator,
        [("eu-a", "eu", 1.0, EndpointProfile(latency_ms=(5, 20)))],
        document_cap=0.015,
        concurrency=50,
    )
    big, small = _copies(30, doc="doc-big"), _copies(3, start=30, doc="doc-small")
    results, ledger = h.run(big + small)
    by_doc = {c.chunk_id: c.doc_id for c in big + small}
    spend = {d: sum(e.cost_usd for e in ledger if by_doc[e.chunk_id] == d) for d in by_doc.values()}
    assert spend["doc-big"] <= 0.015, spend
    worst = max(e.reserved_usd for e in ledger)
    assert spend["doc-big"] + worst > 0.015, "the document's cap is used while a call still fits"
    big_results = [r for r in results if r.doc_id == "doc-big"]
    assert {r.status for r in big_results} == {"succeeded", "skipped"}
    skipped = [r for r in big_results if r.status == "skipped"]
    assert all(
        r.reason == "budget_exhausted" and "document budget" in (r.error or "") for r in skipped
    )
    assert {r.status for r in results if r.doc_id == "doc-small"} == {"succeeded"}


def test_document_shortfall_downgrades_that_chunk_only(simulator: Any) -> None:
    h = Harness(
        simulator,
        DEAR_FIRST,
        document_cap=0.01,  # dear's worst case fits the run, never one document
        strategy=Ordered(),
        on_exhausted="downgrade",
    )
    results, _ = h.run(_copies(2))
    assert {(r.status, r.provider) for r in results} == {("succeeded", "eu-cheap")}
    plan = h.dispatcher.router.plan(_chunk(), prompt_tokens=500, max_output_tokens=600)
    assert [e.provider for e in plan.candidates] == ["eu-cheap", "eu-dear"], "no run ceiling"


def test_a_cut_off_answer_gets_more_room_once_and_is_never_rerouted(simulator: Any) -> None:
    """An answer cut off at max output is not the endpoint's fault: a dearer endpoint
    with the same cap would be cut off too. One retry with twice the room, then stop."""
    h = Harness(
        simulator,
        [("eu-cheap", "eu", 0.1, EndpointProfile()), ("eu-dear", "eu", 2.0, EndpointProfile())],
        max_output_tokens=30,
    )
    (result,), ledger = h.run([_chunk()])
    assert [(e.provider, e.outcome, e.output_tokens) for e in ledger] == [
        ("eu-cheap", "output_truncated", 30),
        ("eu-cheap", "output_truncated", 60),
    ]
    assert simulator.requests("eu-dear") == [], "never rerouted to pay more for the same cut"
    assert (result.status, result.reason) == ("failed", "output_truncated")
    assert "raise task.max_output_tokens (now 30)" in (result.error or "")


def test_a_cut_off_answer_that_fits_in_twice_the_room_succeeds(simulator: Any) -> None:
    h = Harness(simulator, [("eu-a", "eu", 0.1, EndpointProfile())], max_output_tokens=100)
    (result,), ledger = h.run([_chunk()])
    assert [e.outcome for e in ledger] == ["output_truncated", "ok"]
    assert result.status == "succeeded" and result.attempts == 2


def test_a_model_without_more_room_is_asked_for_a_shorter_answer_once(simulator: Any) -> None:
    h = Harness(
        simulator, [("eu-a", "eu", 0.1, EndpointProfile())], max_output_tokens=30, max_output=30
    )
    (result,), ledger = h.run([_chunk()])
    assert [(e.outcome, e.output_tokens) for e in ledger] == [
        ("output_truncated", 30),
        ("output_truncated", 30),
    ]
    assert [r.is_repair for r in simulator.requests("eu-a")] == [False, True]
    assert result.reason == "output_truncated"


def test_a_document_that_keeps_failing_the_same_way_stops_early(simulator: Any) -> None:
    h = Harness(
        simulator,
        [("eu-a", "eu", 0.1, EndpointProfile())],
        max_output_tokens=20,
        max_output=20,
        repair_attempts=0,
        concurrency=1,
        document_failures_max=3,
    )
    bad = [_chunk(n=i, doc="bad") for i in range(8)]
    good = [_chunk(n=10, doc="good")]
    results, ledger = h.run([*bad, *good])
    by_chunk = {r.chunk_id: r for r in results}
    reasons = [by_chunk[c.chunk_id].reason for c in bad]
    assert reasons == ["output_truncated"] * 3 + ["document_breaker"] * 5
    skipped = [by_chunk[c.chunk_id] for c in bad[3:]]
    assert all(r.status == "skipped" and r.attempts == 0 and r.cost_usd == 0 for r in skipped)
    assert "routing.document_failures_max" in (skipped[0].error or "")
    breaker_rows = [e for e in ledger if e.outcome == "document_breaker"]
    assert len(breaker_rows) == 5 and all(e.cost_usd == 0 for e in breaker_rows)
    assert len(simulator.requests("eu-a")) == 3 + 1, "only the three failures and the good doc"
    assert by_chunk["chunk-10"].reason == "output_truncated", "other documents go on"


@pytest.mark.parametrize("change", ["cool", "disable"])
def test_an_endpoint_gone_after_planning_gives_no_route_with_a_reason(
    simulator: Any, change: str
) -> None:
    """The only allowed endpoint rests at planning; while the chunk waits for it, it keeps
    cooling (other chunks' failures) or is disabled: an honest no_route, with a row."""
    h = Harness(simulator, [("eu-a", "eu", 0.1, EndpointProfile())], cooldown_after=1)
    gate = h.dispatcher.gate("eu-a")
    gate.record_failure()  # cooling from the start

    async def sleep(s: float) -> None:
        h.delays.append(s)
        if change == "disable":
            h.dispatcher.router.disable("eu-a")
        else:
            gate.record_failure()  # cooled down again before the chunk got to it

    h.dispatcher._sleep = sleep
    (result,), ledger = h.run([_chunk()])
    assert (result.status, result.reason, result.attempts) == ("failed", "no_route", 0)
    why = "disabled" if change == "disable" else "cooling_down"
    assert f"eu-a/model-eu-a ({why})" in (result.error or "")
    assert [(e.outcome, e.cost_usd) for e in ledger] == [("no_route", 0.0)]
    assert simulator.requests() == []


# -- errors that say what happened ------------------------------------------------------


def _break_key(h: Harness, simulator: Any, name: str) -> None:
    """``name``'s adapter presents a key its simulated endpoint refuses."""
    from pydantic import SecretStr

    h.providers[name] = build_provider(
        "openai",
        EndpointSettings(
            name=name,
            base_url=f"{simulator.url}/{name}/v1",
            api_key=SecretStr("sk-wrong-key-456"),
            timeout_s=10,
            strict_validation=True,
        ),
    )
    h.dispatcher.providers = h.providers


def test_chunks_after_a_rejected_key_say_so_instead_of_no_route(simulator: Any) -> None:
    h = Harness(
        simulator,
        [
            ("eu-a", "eu", 0.1, EndpointProfile(api_key="sk-the-right-key-123")),
            ("us-a", "us", 0.2, EndpointProfile()),
        ],
        concurrency=1,
    )
    _break_key(h, simulator, "eu-a")
    chunks = [_chunk(n=i) for i in range(3)] + [_chunk(regions=("eu", "us"), n=3)]
    results, ledger = h.run(chunks)
    by_id = {r.chunk_id: r for r in results}
    assert len(simulator.requests("eu-a")) == 1, "one 401, then the provider is out"
    called, *unsent = (by_id[f"chunk-{i}"] for i in range(3))
    assert (called.status, called.reason, called.attempts) == ("failed", "auth_error", 1)
    assert (called.error or "").startswith("eu-a rejected the key (Incorrect API key")
    for r in unsent:
        assert (r.status, r.reason, r.attempts) == ("failed", "auth_error", 0)
        assert (r.error or "").startswith("not sent: eu-a rejected the key (Incorrect API key")
    refusals = [e for e in ledger if e.attempt == 0]
    assert [(e.outcome, e.cost_usd) for e in refusals] == [("auth_error", 0.0)] * 2
    assert all("sk-wrong-key-456" not in (e.error or "") for e in ledger)
    other = by_id["chunk-3"]
    assert (other.status, other.provider) == ("succeeded", "us-a"), "a live endpoint serves it"
    first = next(e for e in ledger if e.provider == "eu-a")
    assert first.outcome == "auth_error" and "Incorrect API key" in (first.error or "")


def test_an_endpoint_that_repeats_one_error_and_never_answers_is_disabled(
    simulator: Any,
) -> None:
    """Every request gets the same 500 (a server that refuses the request shape): after
    identical errors on three chunks the endpoint is out, the rest are not sent."""
    h = Harness(
        simulator,
        [("eu-a", "eu", 0.1, EndpointProfile(rate_500=1.0))],
        concurrency=1,
        retries_per_endpoint=2,
        cooldown_after=100,  # this harness's sleeps take no time: a cooldown never ends
    )
    results, ledger = h.run([_chunk(n=i) for i in range(10)])
    # chunk 0: 3 attempts, chunk 1: 3, chunk 2: 1, then disabled (today: 30 attempts).
    assert len(simulator.requests("eu-a")) == 7
    assert sum(e.attempt > 0 for e in ledger) == 7
    assert {r.status for r in results} == {"failed"}
    reasons = sorted((r.reason or "", r.attempts) for r in results)
    assert (
        reasons
        == [("endpoint_disabled", 0)] * 7 + [("endpoint_disabled", 1)] + [("server_error", 3)] * 2
    )
    unsent = [r for r in results if r.attempts == 0]
    assert all(
        (r.error or "").startswith(
            "not sent: eu-a/model-eu-a disabled after 7 identical errors: HTTP 500 The server "
            "had an error"
        )
        for r in unsent
    )
    assert [e.outcome for e in ledger if e.attempt == 0] == ["endpoint_disabled"] * 7
    assert h.dispatcher.health.out(h.dispatcher.router.endpoints[0]) is not None


@pytest.mark.parametrize("concurrency", [1, 10])
def test_random_500s_with_the_same_message_are_still_retried(
    simulator: Any, concurrency: int
) -> None:
    """A flaky endpoint's 500s carry one message too, but it answers in between: it is
    never disabled and every chunk completes."""
    h = Harness(
        simulator,
        [("eu-a", "eu", 0.1, EndpointProfile(rate_500=0.3, seed=7))],
        concurrency=concurrency,
        retries_per_endpoint=8,
        max_attempts=10,
        cooldown_after=100,
    )
    results, ledger = h.run([_chunk(n=i) for i in range(10)])
    assert [r.status for r in results] == ["succeeded"] * 10
    assert any(e.outcome == "server_error" for e in ledger), "faults were injected"
    assert h.dispatcher.health.disabled() == []


def test_an_endpoint_that_answered_once_is_never_disabled_for_repeats(simulator: Any) -> None:
    script = ["none"] + ["server_error"] * 12
    h = Harness(
        simulator,
        [("eu-a", "eu", 0.1, EndpointProfile(script=script))],  # type: ignore[arg-type]
        concurrency=1,
        retries_per_endpoint=2,
        cooldown_after=100,
    )
    results, _ = h.run([_chunk(n=i) for i in range(5)])
    assert len(simulator.requests("eu-a")) == 1 + 4 * 3, "every chunk keeps its retries"
    assert [r.reason for r in results] == [None] + ["server_error"] * 4


def test_a_refused_connection_is_booked_at_zero_and_disables_after_three_chunks(
    simulator: Any,
) -> None:
    import socket

    from pydantic import SecretStr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h = Harness(
        simulator, [("eu-a", "eu", 0.1, EndpointProfile())], concurrency=1, cooldown_after=100
    )
    h.providers["eu-a"] = build_provider(
        "openai",
        EndpointSettings(
            name="eu-a",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=SecretStr("sk-test-key-000"),
            timeout_s=5,
        ),
    )
    h.dispatcher.providers = h.providers
    results, ledger = h.run([_chunk(n=i) for i in range(5)])
    calls = [e for e in ledger if e.attempt > 0]
    assert len(calls) == 7
    for e in calls:
        assert (e.outcome, e.cost_usd, e.http_status) == ("connection_error", 0.0, None)
        assert e.error == f"could not connect to http://127.0.0.1:{port}/v1/chat/completions " + (
            "(connection refused)"
        )
    assert (
        sorted(r.reason or "" for r in results)
        == ["connection_error"] * 2 + ["endpoint_disabled"] * 3
    )


def test_an_invalid_answer_keeps_the_model_the_provider_reported(simulator: Any) -> None:
    h = Harness(simulator, [("eu-a", "eu", 0.1, EndpointProfile(invalid_first=1))])
    (result,), ledger = h.run([_chunk()])
    assert [(e.outcome, e.model_reported) for e in ledger] == [
        ("invalid_output", "model-eu-a"),
        ("ok", "model-eu-a"),
    ]
    assert result.status == "succeeded"
