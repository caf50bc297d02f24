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
- answer cut off at the cap    → once more with twice the room where the model allows (else a
                                "shorter" repair), then ``failed``: ``output_truncated``; never
                                rerouted, since a dearer endpoint is cut off the same way
- low confidence (cascade)    → next dearer tier; if none does better, the last valid
                                answer is kept: ``succeeded`` with reason ``low_confidence``
- transient (429, 5xx, …)     → backoff (``retry-after`` wins) and retry, then next candidate
- terminal (auth, 400, …)     → next candidate (auth also disables the provider)
- an endpoint that never answers but repeats one error on several chunks → disabled for
                                the run (``EndpointHealth``); its chunks say so (below)
- reservation impossible      → ``on_exhausted="stop"``: ``skipped`` (no call made) or
                                ``failed``: ``budget_exhausted``; ``"downgrade"``: only
                                cheaper candidates from then on (run-wide for the run cap)
- no candidate fits the window → ``failed``: ``context_exceeded``, without any call
- no allowed candidate        → ``failed``: ``no_route``, without any call (also when every
                                candidate went to rest after planning)
- its endpoints were disabled  → ``failed``: ``auth_error`` ("not sent: mistral-eu rejected the
                                key (…)") or ``endpoint_disabled`` ("… disabled after 3
                                identical errors: HTTP 500 …"), also for a chunk whose last
                                call went to the endpoint that was then disabled
- its document keeps failing  → ``skipped``: ``document_breaker``, without any call, once
                                ``document_failures_max`` of its chunks failed the same way

Each call is an :class:`pipeline.attempt.Attempt`, which owns it from the budget claim to
its one ledger row. A chunk's failure is data, never an exception that ends the batch; only
a journal that refuses a write (``LedgerWriteError``) does, and cancels the batch's others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Literal

from pipeline import errors
from pipeline.attempt import Attempt, Booking, BudgetShortfall, ledger_row
from pipeline.models import BatchOutcome, Chunk, LedgerEntry, Outcome, Result, Usage
from pipeline.policy import (
    BudgetGuard,
    Cheapest,
    Disabled,
    DocumentBreaker,
    Endpoint,
    EndpointGate,
    EndpointHealth,
    Exclusion,
    ExclusionReason,
    Router,
    Shortfall,
    Strategy,
    cost_bound,
    fits,
    output_cap,
    reservation_usd,
)
from pipeline.providers import ChatRequest, Provider, ProviderReply
from pipeline.providers.bounds import input_token_bound
from pipeline.secrets import scrub
from pipeline.validation import (
    first_messages,
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
    document_failures_max: int = 5
    """Chunks of one document failing the same way before the rest of it is skipped."""
    identical_errors_max: int = 3
    """Distinct chunks an endpoint that never answered gives one identical error before it
    is disabled for the run (``pipeline.policy.health``)."""


#: Times a chunk waits for endpoints that went to rest after it was planned, before it
#: fails ``no_route``.
_REST_ROUNDS = 3


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
    called: Endpoint | None = None  # where the last call went
    excluded: list[Exclusion] = field(default_factory=list)
    fallback: tuple[str, Endpoint, str] | None = None  # valid but not confident: kept
    shortfall: str | None = None  # why the budget refused the last candidate (downgrade)
    unavailable: dict[str, ExclusionReason] = field(
        default_factory=dict
    )  # endpoint → why it took no call


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
        self.breaker = DocumentBreaker(settings.document_failures_max)
        self.health = EndpointHealth(settings.identical_errors_max)

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

        ``on_entry`` sees every ledger entry the moment it exists (the journal), ``on_result``
        every chunk's result. The chunks run in one task group: if one of them fails for a
        reason that is not the chunk's (the journal refused a write), the others are
        cancelled, each booking its call in flight, and that error is raised.
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

        try:
            async with asyncio.TaskGroup() as group:
                for chunk in chunks:
                    group.create_task(one(chunk))
        except BaseExceptionGroup as failed:
            for other in failed.exceptions[1:]:
                log.error("batch: another chunk failed too: %r", other)
            raise failed.exceptions[0] from None
        return outcome

    async def process(
        self, chunk: Chunk, on_entry: Callable[[LedgerEntry], None] | None = None
    ) -> tuple[Result, list[LedgerEntry]]:
        """The one result of ``chunk`` and the ledger entries of its attempts."""
        job = _Job(chunk, on_entry)
        tripped = self.breaker.tripped(chunk.doc_id)
        if tripped is not None:
            self._record_refusal(job, "document_breaker", tripped)
            return self._result(job, "skipped", "document_breaker"), job.ledger
        try:
            await self._route(job)
            result = self._finish(job)
        except errors.LedgerWriteError:
            raise  # infrastructure: the batch stops
        except Exception as exc:  # a bug must not take the batch down with it
            log.exception("chunk %s failed unexpectedly", chunk.chunk_id)
            job.output, job.last_error = None, scrub(f"internal error: {exc!r}")
            result = self._result(job, "failed", "internal_error")
        self.breaker.observe(result)
        return result, job.ledger

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
            outcome, why = plan.refusal(job.chunk)
            if outcome != "no_route" or not self._ended_by_disabling(job):
                self._record_refusal(job, outcome, why)
            return
        for _ in range(_REST_ROUNDS):  # they may go to rest after planning: wait, then again
            job.unavailable.clear()
            await self._rest_if_all_cooling(candidates)
            usable = [e for e in candidates if self._unavailable(e) is None] or candidates
            await self._walk(job, self._balance(usable, estimate), messages, estimate)
            if not job.unavailable or job.attempts or job.last_outcome is not None:
                break
            if all(self._out(e) for e in candidates):
                break
        if job.output is None and job.shortfall is not None:
            self._record_refusal(job, "budget_exhausted", job.shortfall)
        elif self._ended_by_disabling(job):
            return  # its result says which endpoint was taken out, and why
        elif job.attempts == 0 and job.last_outcome is None and job.unavailable:
            gone = ", ".join(f"{k} ({why})" for k, why in job.unavailable.items())
            self._record_refusal(job, "no_route", f"no allowed endpoint was available: {gone}")

    async def _rest_if_all_cooling(self, candidates: list[Endpoint]) -> None:
        """Every allowed endpoint rests: wait for the first to come back, never fail for it."""
        live = [e for e in candidates if not self._out(e)]
        if live and all(self.gate(e.provider).cooling() for e in live):
            await self._sleep(min(self.gate(e.provider).cooling_for() for e in live))

    def _unavailable(self, endpoint: Endpoint) -> ExclusionReason | None:
        """Why ``endpoint`` takes no call right now, or None."""
        if self._out(endpoint):
            return "disabled"
        if self.gate(endpoint.provider).cooling():
            return "cooling_down"
        return None

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
            step = await self._use_endpoint(job, endpoint, messages, estimate)
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
        self, job: _Job, endpoint: Endpoint, messages: list[dict[str, str]], estimate: int
    ) -> _Next:
        repairs = transient = 0
        max_out = output_cap(endpoint, self.settings.max_output_tokens)
        cut_retried = False
        while job.attempts < self.settings.max_attempts:
            unavailable = self._unavailable(endpoint)
            if unavailable is not None:
                job.unavailable[endpoint.key] = unavailable
                job.excluded.append(Exclusion(endpoint.key, unavailable))
                return _Next.NEXT
            try:
                output = await self._attempt(job, endpoint, messages, max_out)
            except BudgetShortfall as short:
                why = short.shortfall.describe(short.amount_usd, endpoint.key)
                return self._on_shortfall(job, endpoint, why, short.shortfall)
            except errors.OutputTruncated as exc:
                # Not the endpoint's fault: a dearer one with the same cap is cut off too.
                roomier = _more_room(endpoint, estimate, max_out)
                if cut_retried or (roomier is None and repairs >= self.settings.repair_attempts):
                    job.last_error = self._truncation_advice(max_out)
                    return _Next.STOP
                cut_retried = True
                if roomier is not None:
                    max_out = roomier
                else:  # the model allows no more: ask for a shorter answer instead
                    repairs += 1
                    messages = repair_messages(messages, exc)
                continue
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
                if isinstance(exc, errors.AuthError):
                    self.router.disable(endpoint.provider)
                    gone = self.health.reject_key(endpoint, exc.message)
                    if gone is not None:
                        log.warning("disabling %s for this run: %s", endpoint.provider, gone.why)
                return _Next.NEXT
            doubt = self.strategy.judge(output)
            if doubt is not None:
                job.fallback = (output, endpoint, doubt)
                return _Next.ESCALATE
            job.output, job.endpoint = output, endpoint
            return _Next.DONE
        return _Next.NEXT

    def _truncation_advice(self, max_out: int) -> str:
        cap = self.settings.max_output_tokens
        return (
            f"the answer was cut off at {max_out} output tokens; raise task.max_output_tokens "
            f"(now {cap}), or shorten the schema's answers, then `docroute rerun --reason "
            "output_truncated`"
        )

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

    async def _attempt(
        self, job: _Job, endpoint: Endpoint, messages: list[dict[str, str]], max_out: int
    ) -> str:
        """One admitted, reserved, ledgered call; returns the validated JSON or raises."""
        request = ChatRequest(
            model=endpoint.model,
            messages=messages,
            schema_name=self.schema.name,
            json_schema=self._json_schema,
            max_output_tokens=max_out,
            temperature=self.settings.temperature,
            structured_mode=endpoint.structured_mode,
        )
        gate = self.gate(endpoint.provider)
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
                    reply = await self._complete(endpoint, request, gate, job.chunk.chunk_id)
                    attempt.answered(reply)
                    return validate_reply(reply, self.schema)
            finally:
                if attempt.entry is not None:
                    job.last_outcome, job.last_error = attempt.reason, attempt.entry.error

    async def _complete(
        self, endpoint: Endpoint, request: ChatRequest, gate: EndpointGate, chunk_id: str
    ) -> ProviderReply:
        """The provider's answer; what it says about its quota and health goes to the gate,
        and whether it answered at all to ``self.health``."""
        try:
            with self.health.call(endpoint, chunk_id) as call:
                try:
                    reply = await self.providers[endpoint.provider].complete(request)
                except errors.ProviderError as exc:
                    call.failed(exc)
                    raise
                call.answered()
        except errors.ProviderError as exc:
            if call.disabled is not None:
                log.warning("disabling %s for this run: %s", endpoint.key, call.disabled.why)
            gate.observe(exc.limits)
            if isinstance(exc, errors.RateLimited):
                gate.pause(exc.retry_after or self.settings.backoff_initial_s)
            elif isinstance(exc, errors.TransientError):
                gate.record_failure(exc.retry_after)
            raise
        gate.observe(reply.limits)
        gate.record_success()
        return reply

    def _out(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is taken out for the run (a rejected key, repeated errors)."""
        return self.router.is_disabled(endpoint.provider) or self.health.out(endpoint) is not None

    def _ended_by_disabling(self, job: _Job) -> bool:
        """Record why a chunk ended if it is because endpoints it may use were disabled
        for the run: ``auth_error`` or ``endpoint_disabled`` with the reason, not a
        ``no_route`` (never sent) or the last call's transient error (sent)."""
        if job.output is not None or job.fallback is not None:
            return False
        if job.ledger and job.ledger[-1].attempt == 0:
            return False  # already refused for a reason of its own (the budget)
        if job.attempts:
            gone = self.health.out(job.called) if job.called is not None else None
            if gone is None:
                return False
            job.last_outcome, job.last_error = gone.outcome, gone.why
            return True
        allowed = [e for e in self.router.endpoints if e.region in job.chunk.regions]
        found: dict[Disabled, None] = {}
        for e in allowed:
            why = self.health.out(e)
            if why is not None:
                found[why] = None
        if not found:
            return False
        first = next(iter(found))
        self._record_refusal(job, first.outcome, "not sent: " + "; ".join(d.why for d in found))
        return True

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (retry - 1))
        delay *= 0.5 + self._rng.random() / 2  # jitter: spread the retries of many chunks
        return max(delay, retry_after or 0.0)

    def _record_refusal(self, job: _Job, outcome: Outcome, why: str) -> None:
        """A decision not to call (no route, no budget): a zero-cost ledger row says why."""
        job.last_outcome, job.last_error = outcome, why
        booking = Booking(outcome, Usage(), 0.0, None, why)
        entry = ledger_row(self.run_id, job.chunk.chunk_id, 0, None, booking, started=time.time())
        job.ledger.append(entry)
        if job.sink is not None:
            try:
                job.sink(entry)
            except Exception as exc:
                raise errors.LedgerWriteError(f"the journal refused a row: {exc!r}") from exc

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


def _more_room(endpoint: Endpoint, prompt_tokens: int, max_out: int) -> int | None:
    """A doubled output cap for a retry after a cut-off answer, if the model allows more."""
    roomier = min(2 * max_out, endpoint.price.max_output_tokens)
    if roomier <= max_out or not fits(endpoint, prompt_tokens, roomier):
        return None
    return roomier


def _excluded_json(excluded: list[Exclusion]) -> str | None:
    """``Result.excluded``: each (endpoint, reason) once, in the order decided; None if none."""
    seen = dict.fromkeys((x.endpoint, x.reason) for x in excluded)
    if not seen:
        return None
    return json.dumps([{"endpoint": e, "reason": r} for e, r in seen])
