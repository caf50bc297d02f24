"""Sending chunks to endpoints: one terminal ``Result`` per chunk, one ``LedgerEntry`` per attempt.

    dispatcher = Dispatcher(run_id=..., router=..., budget=..., providers=..., task=...)
    outcome = await dispatcher.run_batch(chunks)        # BatchOutcome(results, ledger)

For each chunk, candidates come from the router in the order of ``settings.strategy``
(cheapest first by default), never outside the chunk's regions; what preflight left out
(window too small, no structured output, …) is listed in ``Result.excluded``. At each
candidate the worst case is reserved from the budget (the run's and the document's)
before the call and settled with the reported usage after it. Then:

- the answer validates        → ``succeeded`` (cascade: unless not confident enough, below)
- invalid answer              → repair prompt (``repair_attempts`` times), then next candidate
- low confidence (cascade)    → next dearer tier; if none does better, the last valid
                                answer is kept: ``succeeded`` with reason ``low_confidence``
- transient (429, 5xx, …)     → backoff (``retry-after`` wins) and retry, then next candidate
- terminal (auth, 400, …)     → next candidate (auth also disables the provider)
- reservation impossible      → ``on_exhausted="stop"``: ``skipped`` (no call made) or
                                ``failed``: ``budget_exhausted``; ``"downgrade"``: only
                                cheaper candidates from then on (run-wide for the run cap)
- no candidate fits the window → ``failed``: ``context_exceeded``, without any call
- no allowed candidate        → ``failed``: ``no_route``, without any call

A chunk's failure is data, never an exception that ends the batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from pipeline import errors
from pipeline.models import BatchOutcome, Chunk, LedgerEntry, Outcome, Result, Usage
from pipeline.policy import (
    BudgetGuard,
    Cheapest,
    Endpoint,
    EndpointGate,
    Exclusion,
    Router,
    Shortfall,
    Strategy,
    cost_bound,
    output_cap,
    reservation_usd,
)
from pipeline.providers import ChatRequest, Provider
from pipeline.secrets import scrub
from pipeline.validation import (
    first_messages,
    prompt_token_bound,
    prompt_token_estimate,
    repair_messages,
    validate_reply,
)
from schemas import SchemaSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
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


_NO_USAGE = Usage()


class _Next(Enum):
    DONE = "done"  # the chunk has its result
    NEXT = "next"  # try the next candidate
    STOP = "stop"  # no further candidate can help (budget)
    ESCALATE = "escalate"  # a valid answer, not confident enough: try a dearer tier
    DOWNGRADE = "downgrade"  # the budget cannot cover this one: try cheaper ones


@dataclass(slots=True)
class _Job:
    """One chunk's way through the candidates."""

    chunk: Chunk
    sink: Callable[[LedgerEntry], None] | None = None  # sees each entry as it is made
    attempts: int = 0
    ledger: list[LedgerEntry] = field(default_factory=list)
    last_outcome: Outcome | None = None
    last_error: str | None = None
    output: str | None = None
    endpoint: Endpoint | None = None
    excluded: list[Exclusion] = field(default_factory=list)
    fallback: tuple[str, Endpoint, str] | None = None  # valid but not confident: kept
    shortfall: str | None = None  # why the budget refused the last candidate (downgrade)


class Dispatcher:
    def __init__(
        self,
        *,
        run_id: str,
        router: Router,
        budget: BudgetGuard,
        providers: Mapping[str, Provider],
        schema: SchemaSpec,
        settings: DispatchSettings,
        gates: Mapping[str, EndpointGate] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.run_id = run_id
        self.router = router
        self.budget = budget
        self.providers = providers
        self.schema = schema
        self.settings = settings
        self._json_schema = schema.json_schema()
        self._sleep = sleep
        self._rng = random.Random()
        self.strategy = settings.strategy
        self.gates: dict[str, EndpointGate] = dict(gates or {})

    def gate(self, provider: str) -> EndpointGate:
        """The quota and cooldown gate of ``provider`` (unlimited unless configured)."""
        found = self.gates.get(provider)
        if found is None:
            s = self.settings
            found = EndpointGate(cooldown_after=s.cooldown_after, cooldown_s=s.cooldown_s)
            self.gates[provider] = found
        return found

    async def run_batch(
        self,
        chunks: Sequence[Chunk],
        on_result: Callable[[Result], None] | None = None,
        on_entry: Callable[[LedgerEntry], None] | None = None,
    ) -> BatchOutcome:
        """Dispatch ``chunks`` with at most ``settings.concurrency`` calls in flight.

        ``on_entry`` sees every ledger entry the moment its attempt completes (the journal).
        """
        gate = asyncio.Semaphore(self.settings.concurrency)
        outcome = BatchOutcome()

        async def one(chunk: Chunk) -> None:
            async with gate:
                result, ledger = await self.process(chunk, on_entry)
            outcome.results.append(result)
            outcome.ledger.extend(ledger)
            if on_result is not None:
                on_result(result)

        await asyncio.gather(*(one(c) for c in chunks))
        return outcome

    async def process(
        self, chunk: Chunk, on_entry: Callable[[LedgerEntry], None] | None = None
    ) -> tuple[Result, list[LedgerEntry]]:
        """The one result of ``chunk`` and the ledger entries of its attempts."""
        job = _Job(chunk, on_entry)
        try:
            await self._route(job)
        except Exception as exc:  # a bug must not take the batch down with it
            log.exception("chunk %s failed unexpectedly", chunk.chunk_id)
            job.output, job.last_outcome, job.last_error = None, None, f"internal error: {exc!r}"
            return self._result(job, "failed", "internal_error"), job.ledger
        return self._finish(job), job.ledger

    async def _route(self, job: _Job) -> None:
        messages = first_messages(self.settings.instructions, job.chunk.text)
        estimate = prompt_token_estimate(messages, job.chunk.token_estimate)
        max_out = self.settings.max_output_tokens
        plan = self.router.plan(
            job.chunk, prompt_tokens=estimate, max_output_tokens=max_out, strategy=self.strategy
        )
        job.excluded.extend(plan.excluded)
        candidates = plan.candidates
        if not candidates:
            self._record_refusal(job, *plan.refusal(job.chunk))
            return
        if all(self.gate(e.provider).cooling() for e in candidates):
            # Every allowed endpoint rests: wait for the first to come back, never fail for it.
            await self._sleep(min(self.gate(e.provider).cooling_for() for e in candidates))
        else:
            candidates = [e for e in candidates if not self.gate(e.provider).cooling()]
        await self._walk(job, self._balance(candidates, estimate), messages, estimate)
        if job.output is None and job.shortfall is not None:
            self._record_refusal(job, "budget_exhausted", job.shortfall)

    async def _walk(
        self, job: _Job, candidates: list[Endpoint], messages: list[dict[str, str]], estimate: int
    ) -> None:
        """Try ``candidates`` in order; escalation skips the tier just left, a downgrade
        skips every candidate not cheaper than the one the budget refused."""
        max_out = self.settings.max_output_tokens
        above: Endpoint | None = None  # cascade: only tiers dearer than this one
        below: Endpoint | None = None  # downgrade: only candidates cheaper than this one
        for endpoint in candidates:
            if below is not None and cost_bound(endpoint, estimate, max_out) >= cost_bound(
                below, estimate, max_out
            ):
                job.excluded.append(Exclusion(endpoint.key, "budget_downgrade"))
                continue
            if above is not None and self._rank(endpoint, estimate) <= self._rank(above, estimate):
                continue
            step = await self._use_endpoint(job, endpoint, messages)
            if step is _Next.ESCALATE:
                above = endpoint
            elif step is _Next.DOWNGRADE:
                below = endpoint
            elif step is not _Next.NEXT:
                return
            if job.attempts >= self.settings.max_attempts:
                return

    def _rank(self, e: Endpoint, prompt_tokens: int) -> tuple[float, ...]:
        return self.strategy.rank(e, prompt_tokens, self.settings.max_output_tokens)

    def _balance(self, candidates: list[Endpoint], prompt_tokens: int) -> list[Endpoint]:
        """Within a tier (equal strategy rank), the candidate with quota room first.

        The strategy's order is kept (cheapest first is the default policy); only ties
        move, so spreading load over several endpoints of the same price costs nothing
        and keeps all their quotas busy instead of queuing at the first one.
        """
        max_out = self.settings.max_output_tokens

        def key(e: Endpoint) -> tuple[tuple[float, ...], float, int]:
            wait = self.gate(e.provider).wait_estimate(prompt_tokens + max_out)
            return self._rank(e, prompt_tokens), wait, e.order

        return sorted(candidates, key=key)

    async def _use_endpoint(
        self, job: _Job, endpoint: Endpoint, messages: list[dict[str, str]]
    ) -> _Next:
        repairs = transient = 0
        while job.attempts < self.settings.max_attempts:
            if self.router.is_disabled(endpoint.provider) or self.gate(endpoint.provider).cooling():
                return _Next.NEXT
            try:
                output = await self._attempt(job, endpoint, messages)
            except _BudgetExhausted as short:
                return self._on_shortfall(job, endpoint, short.why, short.shortfall)
            except errors.InvalidOutput as exc:
                if repairs >= self.settings.repair_attempts:
                    return _Next.NEXT
                repairs += 1
                messages = repair_messages(messages, exc)
                continue
            except errors.TransientError as exc:
                transient += 1
                if transient > self.settings.retries_per_endpoint:
                    return _Next.NEXT
                await self._sleep(self._backoff(transient, exc.retry_after))
                continue
            except errors.TerminalError as exc:
                if isinstance(exc, errors.AuthError) and self.router.disable(endpoint.provider):
                    log.warning("disabling %s for this run: %s", endpoint.provider, exc.message)
                return _Next.NEXT
            doubt = self.strategy.judge(output)
            if doubt is not None:
                job.fallback = (output, endpoint, doubt)
                return _Next.ESCALATE
            job.output, job.endpoint = output, endpoint
            return _Next.DONE
        return _Next.NEXT

    def _on_shortfall(self, job: _Job, endpoint: Endpoint, why: str, short: Shortfall) -> _Next:
        """The budget cannot cover ``endpoint``: stop, or go on with cheaper candidates."""
        if self.settings.on_exhausted == "stop":
            self._record_refusal(job, "budget_exhausted", why)
            return _Next.STOP
        # The run's cap binds every later chunk too; a document's binds only its own.
        if short.scope == "run" and self.router.lower_ceiling(endpoint):
            log.warning(
                "budget: from now on only endpoints cheaper than %s (%s)", endpoint.key, why
            )
        job.excluded.append(Exclusion(endpoint.key, "budget_downgrade"))
        job.shortfall = why
        return _Next.DOWNGRADE

    async def _attempt(self, job: _Job, endpoint: Endpoint, messages: list[dict[str, str]]) -> str:
        """One admitted, reserved, ledgered call; returns the validated JSON or raises."""
        max_out = output_cap(endpoint, self.settings.max_output_tokens)
        gate = self.gate(endpoint.provider)
        # Quota first, money second: no reservation is held while queuing for quota.
        async with gate.slot(prompt_token_estimate(messages, job.chunk.token_estimate) + max_out):
            return await self._call(job, endpoint, messages, max_out, gate)

    async def _call(
        self,
        job: _Job,
        endpoint: Endpoint,
        messages: list[dict[str, str]],
        max_out: int,
        gate: EndpointGate,
    ) -> str:
        reserve = reservation_usd(endpoint, prompt_token_bound(messages), max_out)
        hold = await self.budget.claim(reserve, job.chunk.doc_id)
        if isinstance(hold, Shortfall):
            raise _BudgetExhausted(hold, hold.describe(reserve, endpoint.key))
        job.attempts += 1
        job.shortfall = None
        started = time.time()
        usage, cost = Usage(), 0.0
        attempt_id = uuid.uuid4().hex
        if job.sink is not None:  # journaled before the call: a kill now still leaves its trace
            job.sink(self._in_flight(job, endpoint, started, reserve, attempt_id))
        try:
            reply = await self.providers[endpoint.provider].complete(
                ChatRequest(
                    model=endpoint.model,
                    messages=messages,
                    schema_name=self.schema.name,
                    json_schema=self._json_schema,
                    max_output_tokens=max_out,
                    temperature=self.settings.temperature,
                    structured_mode=endpoint.structured_mode,
                )
            )
            gate.observe(reply.limits)
            gate.record_success()
            usage = reply.usage
            cost = endpoint.price.cost_usd(usage)
            output = validate_reply(reply, self.schema)
        except errors.ProviderError as exc:
            gate.observe(exc.limits)
            if isinstance(exc, errors.RateLimited):
                gate.pause(exc.retry_after or self.settings.backoff_initial_s)
            elif isinstance(exc, errors.TransientError):
                gate.record_failure(exc.retry_after)
            usage = exc.usage
            cost = endpoint.price.cost_usd(usage)
            self._ledger(job, endpoint, started, usage, cost, reserve, exc.outcome, exc, attempt_id)
            raise
        finally:
            self.budget.settle(hold, cost)
        self._ledger(
            job,
            endpoint,
            started,
            usage,
            cost,
            reserve,
            "ok",
            None,
            attempt_id,
            reply.request_id,
            reply.model_reported,
        )
        return output

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (retry - 1))
        delay *= 0.5 + self._rng.random() / 2  # jitter: spread the retries of many chunks
        return max(delay, retry_after or 0.0)

    def _ledger(
        self,
        job: _Job,
        endpoint: Endpoint,
        started: float,
        usage: Usage,
        cost: float,
        reserved: float,
        outcome: Outcome,
        exc: errors.ProviderError | None,
        attempt_id: str,
        request_id: str | None = None,
        model_reported: str | None = None,
    ) -> None:
        job.last_outcome = outcome
        job.last_error = scrub(exc.message) if exc is not None else None
        self._append(
            job,
            self._entry(
                job,
                endpoint,
                started=started,
                latency_ms=(time.time() - started) * 1000,
                usage=usage,
                cost=cost,
                reserved=reserved,
                outcome=outcome,
                http_status=exc.http_status if exc is not None else 200,
                error=job.last_error,
                attempt_id=attempt_id,
                request_id=request_id or (exc.request_id if exc is not None else None),
                model_reported=model_reported,
            ),
        )

    def _in_flight(
        self, job: _Job, endpoint: Endpoint, started: float, reserved: float, attempt_id: str
    ) -> LedgerEntry:
        """The entry an attempt leaves if the process dies before it completes.

        It costs the reserved worst case (the provider may have billed the call), so a
        resumed run counts it against the cap; the completed entry, with the same
        ``attempt_id`` and journaled after it, replaces it.
        """
        return self._entry(
            job,
            endpoint,
            started=started,
            cost=reserved,
            reserved=reserved,
            outcome="interrupted",
            error="the process stopped while this call was in flight; its cost is the "
            "reserved worst case, since the provider may have billed it",
            attempt_id=attempt_id,
        )

    def _record_refusal(self, job: _Job, outcome: Outcome, why: str) -> None:
        """A decision not to call (no route, no budget): a zero-cost ledger row says why."""
        job.last_outcome, job.last_error = outcome, why
        entry = self._entry(
            job, None, started=time.time(), outcome=outcome, error=why, attempt_id=uuid.uuid4().hex
        )
        self._append(job, entry)

    def _entry(
        self,
        job: _Job,
        endpoint: Endpoint | None,
        *,
        started: float,
        outcome: Outcome,
        error: str | None,
        attempt_id: str,
        latency_ms: float = 0.0,
        usage: Usage = _NO_USAGE,
        cost: float = 0.0,
        reserved: float = 0.0,
        http_status: int | None = None,
        request_id: str | None = None,
        model_reported: str | None = None,
    ) -> LedgerEntry:
        """One ledger row of ``job``; without ``endpoint``, a decision not to call (attempt 0)."""
        return LedgerEntry(
            run_id=self.run_id,
            chunk_id=job.chunk.chunk_id,
            attempt=job.attempts if endpoint is not None else 0,
            provider=endpoint.provider if endpoint is not None else None,
            model=endpoint.model if endpoint is not None else None,
            region=endpoint.region if endpoint is not None else None,
            mode="sync",
            started_at=started,
            latency_ms=latency_ms,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost_usd=cost,
            reserved_usd=reserved,
            outcome=outcome,
            http_status=http_status,
            error=error,
            request_id=request_id,
            model_reported=model_reported,
            attempt_id=attempt_id,
        )

    @staticmethod
    def _append(job: _Job, entry: LedgerEntry) -> None:
        job.ledger.append(entry)
        if job.sink is not None:
            job.sink(entry)

    def _finish(self, job: _Job) -> Result:
        if job.output is not None:
            return self._result(job, "succeeded", None)
        if job.fallback is not None:
            job.output, job.endpoint, doubt = job.fallback
            note = f"kept the answer of {job.endpoint.key}, the dearest tier that answered: {doubt}"
            return self._result(job, "succeeded", "low_confidence", note)
        if job.last_outcome == "budget_exhausted" and job.attempts == 0:
            return self._result(job, "skipped", "budget_exhausted")
        return self._result(job, "failed", job.last_outcome or "attempts_exhausted")

    def _result(
        self, job: _Job, status: str, reason: str | None, note: str | None = None
    ) -> Result:
        ep = job.endpoint
        return Result(
            run_id=self.run_id,
            chunk_id=job.chunk.chunk_id,
            doc_id=job.chunk.doc_id,
            path=job.chunk.path,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            output=job.output,
            provider=ep.provider if ep else None,
            model=ep.model if ep else None,
            region=ep.region if ep else None,
            attempts=job.attempts,
            cost_usd=sum(e.cost_usd for e in job.ledger),
            finished_at=time.time(),
            schema_name=self.schema.name,
            error=job.last_error if job.output is None else note,
            excluded=_excluded_json(job.excluded),
        )


def _excluded_json(excluded: list[Exclusion]) -> str | None:
    """``Result.excluded``: each (endpoint, reason) once, in the order decided; None if none."""
    seen = dict.fromkeys((x.endpoint, x.reason) for x in excluded)
    if not seen:
        return None
    return json.dumps([{"endpoint": e, "reason": r} for e, r in seen])


class _BudgetExhausted(Exception):
    """Internal signal: the budget cannot cover the next call."""

    def __init__(self, shortfall: Shortfall, why: str) -> None:
        super().__init__(why)
        self.shortfall = shortfall
        self.why = why
