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

This module decides where each chunk goes next. Each call is made by
:class:`pipeline.call.Caller` (quota slot, budget hold, provider, validation) in an
:class:`pipeline.attempt.Attempt`, which owns it from the budget claim to its one ledger
row; what a chunk tried and the ``Result`` it ends with are a
:class:`pipeline.chunk_job.ChunkJob`. The settings are ``pipeline.policy.DispatchSettings``
(``dispatch_settings(cfg, schema)``). A chunk's failure is data, never an exception that
ends the batch; only a journal that refuses a write (``LedgerWriteError``) does, and
cancels the batch's others.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from enum import Enum

from pipeline import errors
from pipeline.attempt import BudgetShortfall
from pipeline.call import Caller
from pipeline.chunk_job import ChunkJob
from pipeline.models import BatchOutcome, Chunk, LedgerEntry, Result
from pipeline.policy import (
    BudgetGuard,
    Disabled,
    DispatchSettings,
    DocumentBreaker,
    Endpoint,
    EndpointGate,
    EndpointHealth,
    Exclusion,
    ExclusionReason,
    Router,
    Shortfall,
    cost_bound,
    fits,
    output_cap,
)
from pipeline.providers import Provider
from pipeline.secrets import scrub
from pipeline.validation import first_messages, prompt_token_estimate, repair_messages
from schemas import SchemaSpec

log = logging.getLogger(__name__)


#: Times a chunk waits for endpoints that went to rest after it was planned, before it
#: fails ``no_route``.
_REST_ROUNDS = 3


class _Next(Enum):
    DONE = "done"  # the chunk has its result
    NEXT = "next"  # try the next candidate
    STOP = "stop"  # no further candidate can help (budget)
    ESCALATE = "escalate"  # a valid answer, not confident enough: try a dearer tier
    DOWNGRADE = "downgrade"  # the budget cannot cover this one: try cheaper ones


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
        self._sleep = sleep
        self._rng = random.Random()
        self.strategy = settings.strategy
        self.gates: dict[str, EndpointGate] = dict(gates or {})
        self.breaker = DocumentBreaker(settings.document_failures_max)
        self.health = EndpointHealth(settings.identical_errors_max)
        self.caller = Caller(
            run_id=run_id,
            budget=budget,
            schema=schema,
            health=self.health,
            temperature=settings.temperature,
            pause_s=settings.backoff_initial_s,
        )

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
        self,
        chunk: Chunk,
        on_entry: Callable[[LedgerEntry], None] | None = None,
        job: ChunkJob | None = None,
    ) -> tuple[Result, list[LedgerEntry]]:
        """The one result of ``chunk`` and the ledger entries of its attempts; ``job``
        continues a chunk that already made attempts (a batch job's request)."""
        if job is None:
            job = ChunkJob(chunk, run_id=self.run_id, schema_name=self.schema.name, sink=on_entry)
        tripped = self.breaker.tripped(chunk.doc_id)
        if tripped is not None:
            job.refuse("document_breaker", tripped)
            return job.result("skipped", "document_breaker"), job.ledger
        try:
            await self._route(job)
            result = job.finish()
        except errors.LedgerWriteError:
            raise  # infrastructure: the batch stops
        except Exception as exc:  # a bug must not take the batch down with it
            log.exception("chunk %s failed unexpectedly", chunk.chunk_id)
            job.output, job.last_error = None, scrub(f"internal error: {exc!r}")
            result = job.result("failed", "internal_error")
        self.breaker.observe(result)
        return result, job.ledger

    async def _route(self, job: ChunkJob) -> None:
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
                job.refuse(outcome, why)
            return
        for _ in range(_REST_ROUNDS):  # they may go to rest after planning: wait, then again
            job.unavailable.clear()
            await self._rest_if_all_cooling(candidates)
            usable = [e for e in candidates if self._unavailable(e) is None] or candidates
            ordered = self._balance(usable, estimate)
            ordered.sort(key=lambda e: e.key in job.avoid)  # a batch failed there: reroute first
            await self._walk(job, ordered, messages, estimate)
            if not job.unavailable or job.attempts or job.last_outcome is not None:
                break
            if all(self._out(e) for e in candidates):
                break
        if job.output is None and job.shortfall is not None:
            job.refuse("budget_exhausted", job.shortfall)
        elif self._ended_by_disabling(job):
            return  # its result says which endpoint was taken out, and why
        elif job.attempts == 0 and job.last_outcome is None and job.unavailable:
            gone = ", ".join(f"{k} ({why})" for k, why in job.unavailable.items())
            job.refuse("no_route", f"no allowed endpoint was available: {gone}")

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
        self,
        job: ChunkJob,
        candidates: list[Endpoint],
        messages: list[dict[str, str]],
        estimate: int,
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
        self, job: ChunkJob, endpoint: Endpoint, messages: list[dict[str, str]], estimate: int
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
                output = await self.caller.call(
                    job, endpoint, self.providers, self.gate(endpoint.provider), messages, max_out
                )
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

    def _on_shortfall(self, job: ChunkJob, endpoint: Endpoint, why: str, short: Shortfall) -> _Next:
        """The budget cannot cover ``endpoint``: stop, or go on with cheaper candidates."""
        if self.settings.on_exhausted == "stop":
            job.refuse("budget_exhausted", why)
            return _Next.STOP
        # The run's cap binds every later chunk too; a document's binds only its own.
        if short.scope == "run" and self.router.lower_ceiling(endpoint):
            log.warning(
                "budget: from now on only endpoints cheaper than %s (%s)", endpoint.key, why
            )
        job.excluded.append(Exclusion(endpoint.key, "budget_downgrade"))
        job.shortfall = why
        return _Next.DOWNGRADE

    def _out(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is taken out for the run (a rejected key, repeated errors)."""
        return self.router.is_disabled(endpoint.provider) or self.health.out(endpoint) is not None

    def _ended_by_disabling(self, job: ChunkJob) -> bool:
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
        job.refuse(first.outcome, "not sent: " + "; ".join(d.why for d in found))
        return True

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (retry - 1))
        delay *= 0.5 + self._rng.random() / 2  # jitter: spread the retries of many chunks
        return max(delay, retry_after or 0.0)


def _more_room(endpoint: Endpoint, prompt_tokens: int, max_out: int) -> int | None:
    """A doubled output cap for a retry after a cut-off answer, if the model allows more."""
    roomier = min(2 * max_out, endpoint.price.max_output_tokens)
    if roomier <= max_out or not fits(endpoint, prompt_tokens, roomier):
        return None
    return roomier
