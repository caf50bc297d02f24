"""Chunks as provider batch jobs (half price), finished synchronously where time runs out.

    dispatcher = BatchDispatcher(sync_dispatcher, store=store, mode="auto",
                                 deadline_at=started + 4 * 3600, poll_s=30, poll_max_s=300)
    await dispatcher.adopt()                 # a resumed run: jobs its earlier attempt left
    outcome = await dispatcher.run_batch(chunks, on_result=..., on_entry=journal.append)
    await dispatcher.finish()                # at the end of the run

For each chunk of a batch (``routing.mode`` ``batch`` or ``auto``), the router's candidates
are planned as for a sync call (residency, windows, structured output), and the cheapest
at the price it would be billed wins (batch prices where the endpoint takes jobs:
``Endpoint.batch`` and an adapter that ``supports_batch``; ``ordered``: the first); if
that is a sync-only endpoint, the chunk goes sync. Chunks are grouped by (endpoint,
allowed regions), so a job never mixes chunks whose regions differ, and split to the
vendor's limits (``BatchLimits``). Each request's worst case at batch prices is held from
the budget before the job is created; a request the budget cannot hold right now goes the
sync way instead, where the budget's usual rules (wait, refuse, downgrade) apply.

Exactly once: the job's intent (every ``custom_id`` = attempt id) is saved before the
create call and the job id as soon as it returns (``pipeline.store.intents``). A create
call that failed without a clear answer (timeout, 5xx) is followed by a look in the
vendor's listing. A resumed run adopts what its earlier attempt left (``adopt``): a job
with an id is polled, an intent without one is looked for by its metadata, and only one
the vendor does not know is forgotten (never created); its chunks are dispatched anew.
Each request gets one ledger row (``mode`` ``batch``, ``batch_id``), journaled when its
answer is read, and a request already in the ledger is never booked again, however often
the job is read.

Jobs are polled with backoff (``poll_s`` growing 1.5× to ``poll_max_s``), each read logged
with its progress. At the fallback moment (``_fallback_at``: the deadline less the time
the outstanding requests would take sync under the endpoint's quota, and twice a margin)
an unfinished job is cancelled; what it completed is kept, the rest (``batch_unfinished``:
not billed) goes sync, as do expired and failed jobs' requests. Jobs go in rounds, by the
sync rules: after an invalid answer the next round asks the same endpoint again with a
repair prompt (``repair_attempts``), after a transient error line it retries there
(``retries_per_endpoint``), then it moves to the next cheapest endpoint taking jobs (the
failed one left out), while the deadline allows; else the chunk goes sync. An answer cut
off at the output cap goes sync (more room, never rerouted). A request whose job has not
ended when the run must go on, or whose results cannot be read, is booked ``uncertain`` at
its reserved worst case: the vendor may bill it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline import errors
from pipeline.attempt import Booking, ledger_row
from pipeline.chunk_job import ChunkJob
from pipeline.dispatch import Dispatcher
from pipeline.models import BatchOutcome, Chunk, LedgerEntry, Result, Usage
from pipeline.policy import Endpoint, Hold, output_cap, reservation_usd
from pipeline.providers import ChatRequest
from pipeline.providers.batch import BatchLine, BatchProvider, LineResult, split, supports_batch
from pipeline.providers.bounds import input_token_bound
from pipeline.secrets import scrub
from pipeline.store import Store
from pipeline.store.intents import Intents, JobIntent, JobRequest
from pipeline.validation import (
    first_messages,
    prompt_token_estimate,
    repair_messages,
    validate_reply,
)

__all__ = ["SYNC_CALL_S", "BatchDispatcher"]

log = logging.getLogger(__name__)

Mode = Literal["sync", "batch", "auto"]
Next = Literal["done", "round", "sync"]
#: The time one synchronous call is assumed to take, to decide when the rest of an
#: unfinished job must go sync so that it is done by the deadline (``concurrency`` at once).
SYNC_CALL_S = 2.0
#: Longest margin kept before the deadline, and longest wait for a cancelled job to end
#: (OpenAI: cancelling may take up to 10 minutes).
MAX_MARGIN_S = 600.0
_UNKNOWN = object()  # a create call whose outcome nobody can tell
_UNFINISHED = "its batch job ended (cancelled or expired) before this request ran: not billed"
_UNCERTAIN = (
    "its batch job had not ended, or could not be read, when the run had to go on; booked "
    "at the reserved worst case, since the provider may bill it"
)
#: Reads of an ended job's results before its requests are given up as ``uncertain``.
_RESULT_READS = 3


@dataclass(slots=True)
class _Request:
    """One chunk's request in a job, from its reservation to its ledger row."""

    job: ChunkJob
    endpoint: Endpoint
    custom_id: str
    number: int
    hold: Hold
    request: ChatRequest | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    tries: tuple[int, int] = (0, 0)
    """(repairs, retries) already made at this endpoint by earlier rounds."""
    tokens: int = 0
    """What the request weighs in the endpoint's TPM window if it has to go sync."""
    batch_id: str | None = None
    submitted_at: float | None = None
    """When its job was created: the ledger row's ``started_at``; its latency runs to the
    moment the answer was read (what a job's turnaround was)."""
    done: asyncio.Future[LineResult | None] | None = None


@dataclass(slots=True)
class _Job:
    """A job's requests and what the vendor said about it."""

    intent: JobIntent
    endpoint: Endpoint
    requests: dict[str, _Request] = field(default_factory=dict)


class BatchDispatcher:
    """Batch jobs in front of a sync ``Dispatcher`` (which every fallback goes through)."""

    def __init__(
        self,
        sync: Dispatcher,
        *,
        store: Store,
        mode: Mode,
        deadline_at: float | None,
        poll_s: float,
        poll_max_s: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sync = sync
        self.store = store
        self.mode = mode
        self.deadline_at = deadline_at
        self.poll_s, self.poll_max_s = poll_s, poll_max_s
        self.intents = Intents(store.state_dir)
        self._clock, self._sleep = clock, sleep
        self._started = clock()
        self._adopted: dict[str, _Request] = {}  # chunk id → its request in an adopted job
        self._adopted_jobs: list[asyncio.Task[None]] = []
        self._saved: list[JobIntent] = []
        #: Requests (and their tokens) held for or in unfinished jobs, by provider: what
        #: would go sync there at the deadline, so what the fallback moment is planned for.
        self._outstanding: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._json_schema = sync.schema.json_schema()
        #: Chunks the next round sends to the same endpoint again (chunk id → the endpoint,
        #: the messages to send, and the (repairs, retries) made there), as sync does:
        #: a repair prompt after an invalid answer, a retry after a transient error.
        self._again: dict[str, tuple[Endpoint, list[dict[str, str]], tuple[int, int]]] = {}

    @property
    def run_id(self) -> str:
        return self.sync.run_id

    # -- the batch of chunks ---------------------------------------------------------------

    async def run_batch(
        self,
        chunks: Sequence[Chunk],
        on_result: Callable[[Result], None] | None = None,
        on_entry: Callable[[LedgerEntry], None] | None = None,
    ) -> BatchOutcome:
        """Like ``Dispatcher.run_batch``: one result per chunk, every attempt's ledger row.

        Jobs go in rounds: a chunk whose answer in a job was invalid (or an error) goes in
        the next round's job at its next cheapest endpoint taking jobs (rerouted), while
        the deadline allows; what no job can take goes sync at once."""
        outcome = BatchOutcome()
        gate = asyncio.Semaphore(self.sync.settings.concurrency)

        def done(result: Result, ledger: list[LedgerEntry]) -> None:
            outcome.results.append(result)
            outcome.ledger.extend(ledger)
            if on_result is not None:
                on_result(result)

        async def go_sync(chunk: Chunk, job: ChunkJob | None) -> None:
            async with gate:
                result, ledger = await self.sync.process(chunk, on_entry, job)
            done(result, ledger)

        async def settle(
            req: _Request, chunk: Chunk, again: list[tuple[Chunk, ChunkJob]] | None
        ) -> None:
            """Book the request's line; the chunk is done, or goes on: in the next round
            (``again``) if its job answered, else sync."""
            assert req.done is not None
            line = await req.done
            req.job.chunk, req.job.sink = chunk, on_entry  # an adopted one had a stand-in
            verdict = self._book(req, line)
            if verdict == "done":
                done(req.job.finish(), req.job.ledger)
            elif verdict == "round" and again is not None:
                again.append((chunk, req.job))
            else:
                sync.create_task(go_sync(chunk, req.job))

        try:
            async with asyncio.TaskGroup() as sync:  # the sync calls, and adopted requests
                todo: list[tuple[Chunk, ChunkJob | None]] = []
                for chunk in chunks:
                    adopted = self._adopted.pop(chunk.chunk_id, None)
                    if adopted is not None:
                        sync.create_task(settle(adopted, chunk, None))
                    else:
                        todo.append((chunk, None))
                while todo:
                    again: list[tuple[Chunk, ChunkJob]] = []
                    async with asyncio.TaskGroup() as jobs:  # one round of jobs
                        for part, job in await self._jobs(todo, on_entry, sync, go_sync):
                            for chunk, req in part:
                                jobs.create_task(settle(req, chunk, again))
                            if job.intent.job_id is not None:
                                jobs.create_task(self._follow(job))
                    todo = list(again)
        except BaseExceptionGroup as failed:
            raise _first(failed) from None
        return outcome

    async def _jobs(
        self,
        todo: list[tuple[Chunk, ChunkJob | None]],
        on_entry: Callable[[LedgerEntry], None] | None,
        sync: asyncio.TaskGroup,
        go_sync: Callable[[Chunk, ChunkJob | None], Coroutine[Any, Any, None]],
    ) -> list[tuple[list[tuple[Chunk, _Request]], _Job]]:
        """Submit one round: each chunk in a job (grouped by endpoint and region set, split
        to the vendor's limits), or, where no job may take it, started sync."""
        groups: dict[tuple[str, tuple[str, ...]], list[tuple[Chunk, _Request]]]
        groups = defaultdict(list)
        for chunk, prior in todo:
            req = self._reserve(chunk, on_entry, prior)
            if req is None:
                sync.create_task(go_sync(chunk, prior))
            else:
                groups[(req.endpoint.key, chunk.regions)].append((chunk, req))
        submitted = []
        for members in groups.values():
            for part in self._split(members):
                job = await self._submit(part)
                if job is None:
                    for chunk, req in part:
                        sync.create_task(go_sync(chunk, req.job))
                else:
                    submitted.append((part, job))
        return submitted

    def _reserve(
        self,
        chunk: Chunk,
        on_entry: Callable[[LedgerEntry], None] | None,
        prior: ChunkJob | None = None,
    ) -> _Request | None:
        """The chunk's request in a job, its worst case held; None: it goes the sync way
        (always in ``sync`` mode, where only jobs a resumed run adopted are read).
        ``prior``: the chunk's way so far, whose failed endpoints (``avoid``) are left out."""
        if self.mode == "sync" or self.sync.breaker.tripped(chunk.doc_id) is not None:
            return None
        if prior is not None and prior.attempts >= self.sync.settings.max_attempts:
            return None
        settings = self.sync.settings
        messages = first_messages(settings.instructions, chunk.text)
        estimate = prompt_token_estimate(messages, chunk.token_estimate)
        plan = self.sync.router.plan(
            chunk,
            prompt_tokens=estimate,
            max_output_tokens=settings.max_output_tokens,
            strategy=self.sync.strategy,
        )
        same = self._again.pop(chunk.chunk_id, None) if prior is not None else None
        tries = (0, 0)
        if same is not None:
            endpoint, messages, tries = same
            estimate = prompt_token_estimate(messages, chunk.token_estimate)
        else:
            avoid = prior.avoid if prior is not None else set()
            candidates = [e for e in plan.candidates if e.key not in avoid]
            found = self._choice(candidates, estimate)
            if found is None:
                return None
            endpoint = found
        max_out = output_cap(endpoint, settings.max_output_tokens)
        request = ChatRequest(
            model=endpoint.model,
            messages=messages,
            schema_name=self.sync.schema.name,
            json_schema=self._json_schema,
            max_output_tokens=max_out,
            temperature=settings.temperature,
            structured_mode=endpoint.structured_mode,
        )
        tokens = estimate + max_out
        if not self._time_for_a_job(endpoint, tokens):
            return None
        bound = input_token_bound(request, endpoint.kind)
        hold = self.sync.budget.try_reserve(
            reservation_usd(endpoint, bound, max_out, batch=True), chunk.doc_id
        )
        if hold is None:
            return None  # the sync way applies the budget's rules (wait, refuse, downgrade)
        self._add(endpoint.provider, 1, tokens)  # outstanding from now: later ones see it
        job = prior or ChunkJob(
            chunk, run_id=self.run_id, schema_name=self.sync.schema.name, sink=on_entry
        )
        job.excluded.extend(plan.excluded)
        number = job.attempts + 1
        req = _Request(job, endpoint, _attempt_id(), number, hold, request, messages, tries)
        req.tokens = tokens
        return req

    def _choice(self, candidates: list[Endpoint], prompt_tokens: int) -> Endpoint | None:
        """The endpoint a chunk's job goes to, or None if its first choice is a sync one.

        ``ordered``: the first candidate, if it takes jobs. Otherwise the cheapest candidate
        at the price it would be billed (batch prices where it takes jobs): a self-hosted
        model cheaper than any batch job is still called sync."""
        if not candidates:
            return None
        if self.sync.strategy.name == "ordered":
            first = candidates[0]
            return first if self._takes_jobs(first) else None

        def billed(e: Endpoint) -> tuple[float, int]:
            out = output_cap(e, self.sync.settings.max_output_tokens)
            price = e.price.batch() if self._takes_jobs(e) else e.price
            return price.worst_case_usd(prompt_tokens, out), e.order

        best = min(candidates, key=billed)
        return best if self._takes_jobs(best) else None

    def _takes_jobs(self, e: Endpoint) -> bool:
        provider = self.sync.providers.get(e.provider)
        return (
            e.batch
            and provider is not None
            and supports_batch(provider)
            and not self.sync.router.is_disabled(e.provider)
            and self.sync.health.out(e) is None
        )

    def _split(self, members: list[tuple[Chunk, _Request]]) -> list[list[tuple[Chunk, _Request]]]:
        """``members`` (one endpoint, one region set) in jobs within the vendor's limits."""
        provider = self._provider(members[0][1].endpoint)
        by_id = {req.custom_id: (chunk, req) for chunk, req in members}
        lines = [_line(req) for _, req in members]
        parts = split(lines, provider.batch_limits, provider.line_bytes)
        return [[by_id[line.custom_id] for line in part] for part in parts]

    def _provider(self, endpoint: Endpoint) -> BatchProvider:
        provider = self.sync.providers[endpoint.provider]
        assert isinstance(provider, BatchProvider)
        return provider

    async def _submit(self, part: list[tuple[Chunk, _Request]]) -> _Job | None:
        """Create one job: its intent on disk first, then the create call, then its id."""
        endpoint = part[0][1].endpoint
        requests = [
            JobRequest(
                req.custom_id,
                chunk.chunk_id,
                chunk.doc_id,
                req.number,
                req.hold.amount_usd,
                req.tokens,
            )
            for chunk, req in part
        ]
        intent = JobIntent.new(
            self.run_id, endpoint.provider, endpoint.model, endpoint.region, requests
        )
        self.intents.save(intent)
        provider = self._provider(endpoint)
        try:
            lines = [_line(req) for _, req in part]
            job_id = await provider.submit(lines, metadata=intent.metadata)
        except errors.ProviderError as exc:
            found = await self._created_anyway(provider, intent, exc)
            if found is None:
                self._not_created(intent, part, exc)
                return None
            if not isinstance(found, str):
                return self._unknown(intent, endpoint, part)
            job_id = found
        intent = intent.submitted(job_id)
        self.intents.save(intent)
        self._saved.append(intent)
        log.info(
            "batch job %s: %d request(s) at %s (%s), worst case $%.6f held",
            job_id,
            len(part),
            endpoint.key,
            endpoint.region,
            intent.reserved_usd,
        )
        job = _Job(intent, endpoint)
        loop = asyncio.get_running_loop()
        for _, req in part:
            req.done, req.batch_id = loop.create_future(), job_id
            req.submitted_at = intent.created_at
            job.requests[req.custom_id] = req
        return job

    async def _created_anyway(
        self, provider: BatchProvider, intent: JobIntent, exc: errors.ProviderError
    ) -> str | object | None:
        """After a create call that failed with no clear answer (a timeout, a cut
        connection, a 5xx), the job it may have created, looked up by its metadata; None
        if it was refused or is not listed, ``_UNKNOWN`` if the listing failed too."""
        if exc.http_status is not None and exc.http_status < 500:
            return None  # refused: nothing was created
        try:
            return await provider.find(intent.metadata)
        except errors.ProviderError as again:
            log.warning(
                "batch job intent %s: the create call failed (%s) and the listing too (%s)",
                intent.intent_id,
                scrub(exc.message),
                scrub(again.message),
            )
            return _UNKNOWN

    def _unknown(
        self, intent: JobIntent, endpoint: Endpoint, part: list[tuple[Chunk, _Request]]
    ) -> _Job:
        """A job that may exist: its requests are booked ``uncertain`` at their worst case
        (the vendor may bill them) and go sync; its intent stays for a resumed run."""
        job = _Job(intent, endpoint)
        loop = asyncio.get_running_loop()
        for _, req in part:
            req.done = loop.create_future()
            req.done.set_result(None)
            job.requests[req.custom_id] = req
        self._count(job, -1)  # nothing to wait for
        return job

    def _not_created(
        self, intent: JobIntent, part: list[tuple[Chunk, _Request]], exc: errors.ProviderError
    ) -> None:
        """The job was refused (nothing billed): the holds go back, the chunks go sync."""
        log.warning(
            "batch job of %d request(s) at %s/%s not created (%s); they go sync",
            len(part),
            intent.provider,
            intent.model,
            scrub(exc.message),
        )
        self.intents.forget(intent)
        for _, req in part:
            self.sync.budget.settle(req.hold, 0.0)
            self._add(intent.provider, -1, -req.tokens)

    def _count(self, job: _Job, sign: int) -> None:
        """Add (``+1``) or remove (``-1``) a job's requests from what is outstanding."""
        tokens = sum(r.tokens for r in job.requests.values())
        self._add(job.endpoint.provider, sign * len(job.requests), sign * tokens)

    def _add(self, provider: str, requests: int, tokens: int) -> None:
        held = self._outstanding[provider]
        held[0] += requests
        held[1] += tokens

    # -- a job's life ----------------------------------------------------------------------

    async def _follow(self, job: _Job) -> None:
        """Poll ``job`` until it ends (cancelling it at the fallback moment); then hand
        every request its line. None: the job did not end in time, or its results could
        not be read; a request an ended job's results do not mention never ran."""
        lines: dict[str, LineResult] | None = None
        try:
            if await self._wait(job):
                lines = await self._results(job)
                if lines and not lines.keys() & job.requests.keys():
                    # A job found by time and size (Anthropic keeps no metadata) that holds
                    # none of these requests: another job. Ours may exist: worst case.
                    log.error("batch job %s holds none of its intent's requests", _job_id(job))
                    lines = None
        except errors.ProviderError as exc:
            log.warning("batch job %s: %s; its requests go sync", _job_id(job), exc.message)
        finally:
            self._count(job, -1)
            for custom_id, req in job.requests.items():
                if req.done is not None and not req.done.done():
                    unran = LineResult(custom_id, unfinished=True)
                    req.done.set_result(None if lines is None else lines.get(custom_id, unran))

    async def _results(self, job: _Job) -> dict[str, LineResult]:
        """An ended job's results by ``custom_id``, read again after transient errors."""
        reads = 1
        while True:
            try:
                found = await self._provider(job.endpoint).results(_job_id(job))
                return {line.custom_id: line for line in found}
            except errors.TransientError as exc:
                if reads >= _RESULT_READS:
                    raise
                log.info("batch job %s: results not read yet (%s)", _job_id(job), exc.message)
                await self._sleep(self.poll_s * reads)
                reads += 1

    async def _wait(self, job: _Job) -> bool:
        """Whether the job ended (done, cancelled, expired or failed) before the run must
        go on without it."""
        provider = self._provider(job.endpoint)
        job_id = _job_id(job)
        delay = self.poll_s
        cancelled_at: float | None = None
        while True:
            try:
                state = await provider.poll(job_id)
            except errors.TransientError as exc:
                log.info("batch job %s: status unknown for now (%s)", job_id, exc.message)
            else:
                log.info(
                    "batch job %s at %s: %s, %d/%d done (%d failed)",
                    job_id,
                    job.endpoint.key,
                    state.status,
                    state.done,
                    state.total,
                    state.failed,
                )
                if state.ended:
                    if state.error:
                        log.warning("batch job %s failed: %s", job_id, state.error)
                    return True
            now = self._clock()
            if cancelled_at is None and now >= self._fallback_at(job.endpoint):
                log.warning(
                    "batch job %s: cancelled to finish its requests sync before the deadline",
                    job_id,
                )
                cancelled_at = now
                try:
                    state = await provider.cancel(job_id)
                except errors.ProviderError as exc:
                    log.warning("batch job %s: cancel failed (%s)", job_id, exc.message)
                else:
                    if state.ended:
                        return True
                delay = min(self.poll_s, 1.0)
            if cancelled_at is not None and now - cancelled_at > self._margin():
                return False
            wait = delay
            if cancelled_at is None:
                wait = min(delay, max(self._fallback_at(job.endpoint) - now, 0.0))
            await self._sleep(max(wait, 0.01))
            delay = min(delay * 1.5, self.poll_max_s)

    def _fallback_at(self, endpoint: Endpoint, calls: int = 0, tokens: int = 0) -> float:
        """When unfinished jobs at ``endpoint``'s provider must give way to sync calls: the
        deadline, less the time their requests (and ``calls`` more) would take sync under
        its quota (``EndpointGate.seconds_for``, ``SYNC_CALL_S`` a call), less room for
        the cancel to take effect and a margin (``_margin`` each)."""
        held = self._outstanding[endpoint.provider]
        sync_s = self.sync.gate(endpoint.provider).seconds_for(
            held[0] + calls,
            held[1] + tokens,
            concurrency=self.sync.settings.concurrency,
            call_s=SYNC_CALL_S,
        )
        return self._deadline() - sync_s - 2 * self._margin()

    def _margin(self) -> float:
        """15% of the run's window, at most ``MAX_MARGIN_S``: also how long a cancelled job
        is given to end (vendors finish the requests already running)."""
        return min(MAX_MARGIN_S, 0.15 * max(self._deadline() - self._started, 0.0))

    def _deadline(self) -> float:
        if self.deadline_at is not None:
            return self.deadline_at
        return self._started + 24 * 3600.0  # the vendors' completion window

    def _time_for_a_job(self, endpoint: Endpoint, tokens: int) -> bool:
        """Whether one more request in a job at ``endpoint`` leaves it time to run before
        the job would be cancelled."""
        return self._fallback_at(endpoint, 1, tokens) - self._clock() > 2 * self.poll_s

    # -- one request's answer --------------------------------------------------------------

    def _book(self, req: _Request, line: LineResult | None) -> Next:
        """Ledger the request's answer once; then the chunk is ``done``, or goes in the
        next ``round`` of jobs, or ``sync``."""
        job, endpoint = req.job, req.endpoint
        price = endpoint.price.batch()
        job.attempts, job.called = req.number, endpoint
        output: str | None = None
        invalid: errors.InvalidOutput | None = None
        if line is None:
            booking = Booking("uncertain", Usage(), req.hold.amount_usd, None, _UNCERTAIN)
        elif line.unfinished:
            booking = Booking("batch_unfinished", Usage(), 0.0, None, _UNFINISHED)
        elif line.reply is not None:
            reply = line.reply
            cost = price.cost_usd(reply.usage)
            try:
                output = validate_reply(reply, self.sync.schema)
                booking = Booking(
                    "ok", reply.usage, cost, 200, None, reply.request_id, reply.model_reported
                )
            except errors.InvalidOutput as exc:
                invalid = exc
                booking = Booking(
                    exc.outcome, reply.usage, cost, 200, scrub(exc.message), reply.request_id,
                    reply.model_reported,
                )  # fmt: skip
        else:
            said = line.error or errors.ServerError("no answer", provider=endpoint.provider)
            cost = price.cost_usd(said.usage)
            booking = Booking(
                said.outcome, said.usage, cost, said.http_status, scrub(said.message),
                said.request_id,
            )  # fmt: skip
        self.sync.budget.settle(req.hold, booking.cost_usd)
        started = req.submitted_at or time.time()
        entry = ledger_row(
            self.run_id,
            job.chunk.chunk_id,
            req.number,
            endpoint,
            booking,
            started=started,
            latency_ms=max(time.time() - started, 0.0) * 1000,
            reserved=req.hold.amount_usd,
            attempt_id=req.custom_id,
            batch_id=req.batch_id,
        )
        job.ledger.append(entry)
        job.last_outcome, job.last_error = booking.cause or booking.outcome, booking.error
        if job.sink is not None:
            try:
                job.sink(entry)
            except Exception as exc:
                raise errors.LedgerWriteError(f"the journal refused a row: {exc!r}") from exc
        if output is None:
            if line is None or line.unfinished:
                return "sync"
            return self._next_round(req, line, invalid)
        doubt = self.sync.strategy.judge(output)
        if doubt is not None:
            job.fallback, job.avoid = (output, endpoint, doubt), job.avoid | {endpoint.key}
            return "round"
        job.output, job.endpoint = output, endpoint
        return "done"

    def _next_round(
        self, req: _Request, line: LineResult, invalid: errors.InvalidOutput | None
    ) -> Next:
        """Where the chunk goes next, by the sync rules: the same endpoint with a repair
        prompt (``repair_attempts`` times) after an invalid answer, or again after a
        transient error (``retries_per_endpoint`` times); else the next endpoint. An answer
        cut off at the output cap goes sync, where it gets more room (never rerouted)."""
        s, chunk_id = self.sync.settings, req.job.chunk.chunk_id
        repairs, retries = req.tries
        if isinstance(invalid, errors.OutputTruncated):
            return "sync"
        if invalid is not None and repairs < s.repair_attempts:
            messages = repair_messages(req.messages, invalid)
            self._again[chunk_id] = (req.endpoint, messages, (repairs + 1, retries))
        elif isinstance(line.error, errors.TransientError) and retries < s.retries_per_endpoint:
            self._again[chunk_id] = (req.endpoint, req.messages, (repairs, retries + 1))
        else:
            req.job.avoid.add(req.endpoint.key)
        return "round"

    # -- a resumed run ---------------------------------------------------------------------

    async def adopt(self) -> None:
        """Take over the jobs an earlier attempt of this run left (``intents``).

        Requests already in the ledger are done; each other one's reserved worst case is
        held again (past the cap if need be: the provider may bill it whatever the cap
        says), and its chunk, when the run reaches it, waits for the job instead of being
        sent again."""
        booked = self._booked()
        for intent in self.intents.pending(self.run_id):
            endpoint = self._endpoint(intent)
            if endpoint is None:
                log.warning(
                    "batch job intent %s names %s/%s, which this config no longer has; its "
                    "requests cannot be read back",
                    intent.intent_id,
                    intent.provider,
                    intent.model,
                )
                continue
            provider = self._provider(endpoint)
            if intent.job_id is None:
                found = await provider.find(intent.metadata)
                if found is None:  # the create never reached the vendor: nothing was sent
                    self.intents.forget(intent)
                    continue
                log.info("batch job %s: found by its metadata after a restart", found)
                intent = intent.submitted(found)
                self.intents.save(intent)
            self._saved.append(intent)
            job = _Job(intent, endpoint)
            loop = asyncio.get_running_loop()
            for r in intent.requests:
                if r.custom_id in booked:
                    continue
                hold = self.sync.budget.hold_spent(r.reserved_usd, r.doc_id)
                chunk_job = ChunkJob(
                    _placeholder(r), run_id=self.run_id, schema_name=self.sync.schema.name
                )
                req = _Request(chunk_job, endpoint, r.custom_id, r.attempt, hold, tokens=r.tokens)
                req.done, req.batch_id = loop.create_future(), intent.job_id
                req.submitted_at = intent.created_at
                job.requests[r.custom_id] = req
                self._adopted[r.chunk_id] = req
            if job.requests:
                log.info(
                    "batch job %s: %d request(s) outstanding from before the restart",
                    intent.job_id,
                    len(job.requests),
                )
                self._count(job, +1)
                self._adopted_jobs.append(asyncio.create_task(self._follow(job)))

    def _booked(self) -> set[str]:
        """Attempt ids of this run's batch requests already in the ledger."""
        try:
            rows = self.store.read(
                "SELECT attempt_id FROM ledger WHERE run_id = ? AND batch_id IS NOT NULL",
                [self.run_id],
            ).rows
        except Exception:  # a root with no ledger yet
            return set()
        return {r[0] for r in rows}

    def _endpoint(self, intent: JobIntent) -> Endpoint | None:
        for e in self.sync.router.endpoints:
            if (e.provider, e.model) == (intent.provider, intent.model) and self._takes_jobs(e):
                return e
        return None

    async def finish(self) -> list[LedgerEntry]:
        """At the end of the run: the rows of adopted requests whose chunks never came back
        (the corpus changed), and every intent whose requests are all ledgered forgotten."""
        rows: list[LedgerEntry] = []
        leftovers = list(self._adopted.values())
        self._adopted.clear()
        for task in self._adopted_jobs:
            if leftovers:
                await task
            else:
                task.cancel()
        for req in leftovers:
            assert req.done is not None
            line = req.done.result() if req.done.done() else None
            self._book(req, line)
            rows.extend(req.job.ledger)
        for intent in self._saved:
            self.intents.forget(intent)
        return rows


def _first(failed: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error inside (nested) task groups."""
    first = failed.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _line(req: _Request) -> BatchLine:
    assert req.request is not None
    return BatchLine(req.custom_id, req.request)


def _attempt_id() -> str:
    return uuid.uuid4().hex


def _job_id(job: _Job) -> str:
    assert job.intent.job_id is not None
    return job.intent.job_id


def _placeholder(r: JobRequest) -> Chunk:
    """A stand-in chunk until the run reaches the real one (only its ids are read)."""
    return Chunk(r.chunk_id, r.doc_id, "", 0, 0, 0, 0, "", (), "")
