"""The money path's one owner (``pipeline.attempt``): every exit of an attempt settles its
hold once and leaves exactly one completed ledger row, booked at what it may have cost.

Real SDKs against the simulator over loopback; where an exit needs an adapter that
misbehaves (a bug that is not a ``ProviderError``), a provider of our own Protocol raises it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline import errors
from pipeline.models import LedgerEntry
from pipeline.providers import ChatRequest, EndpointSettings, ProviderReply, build_provider
from pipeline.simulator import EndpointProfile
from pipeline.store.journal import Journal, JournalClosedError
from tests.test_dispatch import Harness, _chunk


class _Journal:
    """A journal stand-in that records rows and can be told to fail (a full disk)."""

    def __init__(self, fail_on: Any = None) -> None:
        self.rows: list[LedgerEntry] = []
        self.fail_on = fail_on or (lambda entry: False)

    def __call__(self, entry: LedgerEntry) -> None:
        if self.fail_on(entry):
            raise OSError(28, "No space left on device")
        self.rows.append(entry)

    def completed(self) -> dict[str, LedgerEntry]:
        """The last row per attempt, as journal recovery reads them."""
        return {e.attempt_id or "": e for e in self.rows}


def test_a_journal_that_fails_after_the_claim_returns_the_hold_and_stops_the_batch(
    simulator: Any,
) -> None:
    h = Harness(simulator, [("eu-a", "eu", 0.1, EndpointProfile())], cap=1.0)
    journal = _Journal(fail_on=lambda entry: True)
    with pytest.raises(errors.LedgerWriteError, match="No space left"):
        h.run([_chunk(n=i) for i in range(4)], on_entry=journal)
    assert simulator.requests() == [], "no call is made that could not be journaled"
    assert h.budget.reserved_usd == pytest.approx(0.0, abs=1e-12), "no hold leaked"
    assert h.budget.spent_usd == 0.0

    async def claim_the_whole_cap() -> object:  # a leaked hold would park this for ever
        return await asyncio.wait_for(h.budget.claim(0.999), timeout=10)

    assert asyncio.run(claim_the_whole_cap()).__class__.__name__ == "Hold"


class _Broken:
    """An adapter with a bug: it fails with an exception that is not a ProviderError."""

    name = "eu-a"

    async def complete(self, request: ChatRequest) -> ProviderReply:
        raise RuntimeError("adapter bug after the request may have left")

    async def aclose(self) -> None:
        return None


def test_an_exception_that_is_not_a_provider_error_is_booked_at_its_reserved_cost(
    simulator: Any,
) -> None:
    h = Harness(simulator, [("eu-a", "eu", 0.1, EndpointProfile())], max_attempts=1)
    h.providers["eu-a"] = _Broken()
    h.dispatcher.providers = h.providers
    journal = _Journal()
    (result,), ledger = h.run([_chunk()], on_entry=journal)
    assert (result.status, result.reason) == ("failed", "internal_error")
    (entry,) = ledger
    assert entry.outcome == "internal_error" and "adapter bug" in (entry.error or "")
    assert entry.cost_usd == entry.reserved_usd > 0, "booked at the worst case, never $0"
    assert journal.completed()[entry.attempt_id or ""] == entry, "the journal's last word"
    assert h.budget.spent_usd == pytest.approx(entry.reserved_usd)
    assert h.budget.reserved_usd == pytest.approx(0.0, abs=1e-12)


def test_one_failing_chunk_cancels_its_siblings_and_books_their_calls_in_flight(
    simulator: Any,
) -> None:
    """A fast chunk's journal write fails while four slow calls are in flight: the batch
    stops at once, and each call in flight is booked ``interrupted`` at its worst case."""
    h = Harness(
        simulator,
        [
            ("us-fast", "us", 0.1, EndpointProfile()),
            ("eu-slow", "eu", 0.1, EndpointProfile(rate_timeout=1.0, hang_s=60)),
        ],
        timeout_s=50,
        concurrency=8,
    )
    journal = _Journal(fail_on=lambda e: e.provider == "us-fast" and e.outcome == "ok")
    fast = _chunk(regions=("us",), n=0)
    slow = [_chunk(regions=("eu",), n=i) for i in range(1, 5)]

    async def go() -> None:
        task = asyncio.ensure_future(h.dispatcher.run_batch([*slow, fast], on_entry=journal))
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=40)
        finally:
            task.cancel()
            for p in h.providers.values():
                await p.aclose()

    with pytest.raises(errors.LedgerWriteError):
        asyncio.run(go())
    done = [e for e in journal.completed().values() if e.provider == "eu-slow"]
    assert len(done) == 4
    assert all(e.outcome == "interrupted" and e.cost_usd == e.reserved_usd > 0 for e in done)
    assert all("was stopped" in (e.error or "") for e in done), "completed rows, not kill rows"
    assert h.budget.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert h.budget.spent_usd == pytest.approx(
        sum(e.cost_usd for e in done) + simulator_cost(simulator, "us-fast")
    )


def simulator_cost(simulator: Any, endpoint: str) -> float:
    prompt, completion = simulator.tokens_served(endpoint)
    return (prompt * 0.1 + completion * 0.4) / 1e6


@pytest.mark.parametrize(
    ("profile", "cause"),
    [
        (EndpointProfile(rate_timeout=1.0, hang_s=5), "timeout"),
        (EndpointProfile(rate_drop=1.0), "connection_error"),
    ],
)
def test_a_call_whose_outcome_is_unknown_is_booked_at_its_reserved_worst_case(
    simulator: Any, profile: EndpointProfile, cause: str
) -> None:
    h = Harness(simulator, [("eu-a", "eu", 0.1, profile)], timeout_s=0.5, retries_per_endpoint=0)
    (result,), (entry,) = h.run([_chunk()])
    assert (result.status, result.reason) == ("failed", cause)
    assert entry.outcome == "uncertain" and (entry.error or "").startswith(cause)
    assert entry.cost_usd == entry.reserved_usd > 0, "the provider may have billed it"
    assert h.budget.spent_usd == pytest.approx(entry.reserved_usd)


def test_a_refused_connection_costs_nothing_since_no_request_left(simulator: Any) -> None:
    h = Harness(simulator, [("eu-a", "eu", 0.1, EndpointProfile())], retries_per_endpoint=0)
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h.providers["eu-a"] = build_provider(
        "openai",
        EndpointSettings(
            name="eu-a",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=SecretStr("sk-test-key-000"),
            timeout_s=5,
            strict_validation=True,
        ),
    )
    h.dispatcher.providers = h.providers
    (result,), (entry,) = h.run([_chunk()])
    assert (result.reason, entry.outcome, entry.cost_usd) == (
        "connection_error",
        "connection_error",
        0.0,
    )
    assert h.budget.spent_usd == 0.0


def test_a_journal_refuses_writes_once_committed(tmp_path: Any, simulator: Any) -> None:
    h = Harness(simulator, [("eu-a", "eu", 0.1, EndpointProfile())])
    (_,), (entry,) = h.run([_chunk()])
    journal = Journal.open(tmp_path, "run-1", "run-1/b00001")
    journal.append(entry)
    journal.commit()
    with pytest.raises(JournalClosedError, match="closed"):
        journal.append(entry)  # a straggler must not write to a reused descriptor
