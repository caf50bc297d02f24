"""The ``openai`` adapter (official SDK, aiohttp transport): each fault kind ends in the right
ledger outcome and next step, and a success bills exactly what the provider served."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.simulator import EndpointProfile
from tests.test_providers_common import (
    FAULTS,
    STATUS,
    Harness,
    Spec,
    check_fail,
    check_fault,
    check_success,
    run_fault,
)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_openai_fault_ends_in_its_outcome_and_next_step(simulator: Any, fault: str) -> None:
    h, result, ledger = run_fault(simulator, "openai", fault, protocol="openai")
    check_fault(h, result, ledger, fault, STATUS[fault])


def test_an_openai_endpoint_that_keeps_failing_fails_the_chunk(simulator: Any) -> None:
    check_fail(simulator, "openai", "openai")


def test_openai_success_bills_exactly_what_was_served(simulator: Any) -> None:
    h = Harness(simulator, [Spec("oai-a", "openai", EndpointProfile())])
    entry = check_success(h, "oai-a")
    assert entry.http_status == 200 and entry.request_id
