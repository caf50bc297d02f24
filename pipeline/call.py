"""One call of a chunk at an endpoint: quota slot, budget hold, provider, validated answer.

    caller = Caller(run_id=..., budget=..., schema=..., health=..., temperature=0.0,
                    pause_s=0.5)
    output = await caller.call(job, endpoint, providers, gate, messages, max_out)

``call`` builds the request, waits for the endpoint's quota (``EndpointGate.slot``), then
claims the worst case from the budget in an :class:`pipeline.attempt.Attempt`, which
makes the call's one ledger row whatever happens. What the provider says about its quota
and health goes to the gate; whether it answered at all, to ``EndpointHealth``. The
answer comes back validated against the schema, or the error is raised as it came:
deciding what the chunk does next (repair, retry, next candidate) is the dispatcher's
(:mod:`pipeline.dispatch`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial

from pipeline import errors
from pipeline.attempt import Attempt, ledger_row
from pipeline.chunk_job import ChunkJob
from pipeline.policy import BudgetGuard, Endpoint, EndpointGate, EndpointHealth, reservation_usd
from pipeline.providers import ChatRequest, Provider, ProviderReply
from pipeline.providers.bounds import input_token_bound
from pipeline.validation import prompt_token_estimate, validate_reply
from schemas import SchemaSpec

__all__ = ["Caller"]

log = logging.getLogger(__name__)


class Caller:
    """Makes one admitted, reserved, ledgered call for the dispatcher."""

    def __init__(
        self,
        *,
        run_id: str,
        budget: BudgetGuard,
        schema: SchemaSpec,
        health: EndpointHealth,
        temperature: float | None,
        pause_s: float,
    ) -> None:
        """``pause_s`` is how long a 429 without ``retry-after`` pauses the endpoint."""
        self.run_id = run_id
        self.budget = budget
        self.schema = schema
        self.health = health
        self.temperature = temperature
        self.pause_s = pause_s
        self._json_schema = schema.json_schema()

    async def call(
        self,
        job: ChunkJob,
        endpoint: Endpoint,
        providers: Mapping[str, Provider],
        gate: EndpointGate,
        messages: list[dict[str, str]],
        max_out: int,
    ) -> str:
        """One admitted, reserved, ledgered call; returns the validated JSON or raises.

        ``providers`` are the dispatcher's, looked up only once the call is under way."""
        request = ChatRequest(
            model=endpoint.model,
            messages=messages,
            schema_name=self.schema.name,
            json_schema=self._json_schema,
            max_output_tokens=max_out,
            temperature=self.temperature,
            structured_mode=endpoint.structured_mode,
        )
        number = job.attempts + 1
        attempt = Attempt(
            self.budget,
            # Every billed input token: messages, schema or tools, the protocol's overhead.
            reservation_usd(endpoint, input_token_bound(request, endpoint.kind), max_out),
            document=job.chunk.doc_id,
            price=endpoint.price.cost_usd,
            row=partial(ledger_row, self.run_id, job.chunk.chunk_id, number, endpoint),
            record=job.ledger.append,
            journal=job.sink,
        )
        # Quota first, money second: no reservation is held while queuing for quota.
        async with gate.slot(prompt_token_estimate(messages, job.chunk.token_estimate) + max_out):
            try:
                async with attempt:
                    job.attempts, job.shortfall, job.called = number, None, endpoint
                    reply = await self._complete(
                        endpoint, providers, request, gate, job.chunk.chunk_id
                    )
                    attempt.answered(reply)
                    return validate_reply(reply, self.schema)
            finally:
                if attempt.entry is not None:
                    job.last_outcome, job.last_error = attempt.reason, attempt.entry.error

    async def _complete(
        self,
        endpoint: Endpoint,
        providers: Mapping[str, Provider],
        request: ChatRequest,
        gate: EndpointGate,
        chunk_id: str,
    ) -> ProviderReply:
        """The provider's answer; what it says about its quota and health goes to the gate,
        and whether it answered at all to ``self.health``."""
        try:
            with self.health.call(endpoint, chunk_id) as call:
                try:
                    reply = await providers[endpoint.provider].complete(request)
                except errors.ProviderError as exc:
                    call.failed(exc)
                    raise
                call.answered()
        except errors.ProviderError as exc:
            if call.disabled is not None:
                log.warning("disabling %s for this run: %s", endpoint.key, call.disabled.why)
            gate.observe(exc.limits)
            if isinstance(exc, errors.RateLimited):
                gate.pause(exc.retry_after or self.pause_s)
            elif isinstance(exc, errors.TransientError):
                gate.record_failure(exc.retry_after)
            raise
        gate.observe(reply.limits)
        gate.record_success()
        return reply
