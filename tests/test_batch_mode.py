"""``routing.mode: batch | auto``: chunks as provider batch jobs, through the real SDKs and the
simulator over loopback (its Batch API answers each line as its chat route would).

What is proved here, each against the simulator's own log: residency per job (a job never
mixes region sets and goes only to an allowed endpoint), reservations at batch prices
before the create call (the cap holds with jobs outstanding), one ledger row per request
however often a job is read, invalid answers rerouted to the next provider, the deadline
fallback (cancel, keep what the job did, the rest sync, done before the deadline), and a
``kill -9`` between the create call and its record followed by a resume that finds the job
by its metadata and never submits the requests again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import main
from pipeline.audit import audit
from pipeline.batch_dispatch import BatchDispatcher
from pipeline.batches import drive
from pipeline.config import load_config
from pipeline.opening import Request, decide
from pipeline.prices import load_price_table
from pipeline.run import Run
from pipeline.simulator import SimulatorServer
from pipeline.store import Store
from pipeline.store.intents import Intents
from tests.conftest import REPO, Clock

WORDS = [
    "The",
    "supplier",
    "shall",
    "deliver",
    "the",
    "goods",
    "by",
    "the",
    "first",
    "of",
    "May",
    "and",
    "the",
    "buyer",
    "pays",
    "within",
    "thirty",
    "days",
    "of",
    "the",
    "invoice",
    "date",
    "unless",
    "the",
    "parties",
    "agree",
    "otherwise",
    "in",
    "writing",
]


def corpus(folder: Path, layout: dict[str, int]) -> None:
    """``layout``: sub-folder → number of one-chunk documents in it."""
    for sub, n in layout.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            body = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(60))
            (folder / sub / f"doc-{i:03d}.txt").write_text(f"Record {sub} {i}. {body}\n")


def provider(name: str, region: str, model: str, **sim: Any) -> dict[str, Any]:
    profile = {"latency_ms": [5, 20], "batch_turnaround_s": 1.0} | sim
    return {
        "name": name,
        "kind": "openai",
        "region": region,
        "simulate": "always",
        "simulator": profile,
        "models": [{"id": model}],
    }


def config(tmp: Path, providers: list[dict[str, Any]], **over: Any) -> Path:
    data: dict[str, Any] = {
        "corpus": {
            "path": str(tmp / "corpus"),
            "residency": [
                {"match": "eu/**", "regions": ["eu"]},
                {"match": "us/**", "regions": ["us"]},
                {"match": "any/**", "regions": ["eu", "us"]},
            ],
            "residency_default": "deny",
        },
        "task": {"schema": "chunk_summary", "max_output_tokens": 400},
        "budget": {"run_usd": over.pop("run_usd", 10.0)},
        "routing": {"mode": "batch", "batch_poll_s": 0.1, "batch_poll_max_s": 0.3}
        | over.pop("routing", {}),
        "providers": providers,
        "output": {"root": str(tmp / "out")},
    } | over
    path = tmp / "docroute.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_once(path: str | Path, run_id: str, resume: bool = False) -> dict[str, Any]:
    """Open, drive and close one run in this process (what the flow does, without Prefect)."""
    cfg = load_config(path)
    store = Store(cfg.output.root)
    request = Request(resume=run_id) if resume else Request(run_id=run_id)
    opening = decide(store, cfg, request)

    async def go() -> dict[str, Any]:
        async with Run.open(cfg, opening) as run:
            await drive(run.batches(), run.process_batch, run.parallel)
        return run.summary() | {"deadline_at": cfg.schedule.deadline_after(run.started_at)}

    return asyncio.run(go())


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stored(root: Path, sql: str) -> list[dict[str, Any]]:
    return Store(root).read(sql).to_dicts()


def chunk_of_prompt(root: Path) -> dict[str, dict[str, Any]]:
    """The stored chunks by the simulator's ``prompt_sha256`` (the chunk text's hash)."""
    rows = stored(root, "SELECT chunk_id, text, regions FROM chunks")
    return {sha(r["text"]): r for r in rows}


def test_batch_jobs_keep_residency_and_bill_at_batch_prices(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    corpus(tmp_path / "corpus", {"eu": 6, "us": 5, "any": 4})
    path = config(
        tmp_path,
        [provider("sim-eu", "eu", "gpt-4.1-mini"), provider("sim-us", "us", "gpt-4.1-mini")],
    )
    summary = run_once(path, "b-res")
    root = tmp_path / "out"
    assert summary["succeeded"] == 15
    records = sim_env.requests()
    assert records and all(r.batch_id is not None for r in records), "every call was batched"

    chunks = chunk_of_prompt(root)
    region_of = {"sim-eu": "eu", "sim-us": "us"}
    by_job: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    endpoint_of_job: dict[str, set[str]] = defaultdict(set)
    for r in records:
        chunk = chunks[r.prompt_sha256]
        assert region_of[r.endpoint] in chunk["regions"], "a job went outside a chunk's regions"
        by_job[r.batch_id or ""].add(tuple(chunk["regions"]))
        endpoint_of_job[r.batch_id or ""].add(r.endpoint)
    assert all(len(sets) == 1 for sets in by_job.values()), "a job mixed region sets"
    assert all(len(e) == 1 for e in endpoint_of_job.values())
    assert {s for sets in by_job.values() for s in sets} == {("eu",), ("us",), ("eu", "us")}

    ledger = stored(root, "SELECT * FROM ledger WHERE provider IS NOT NULL")
    assert {row["mode"] for row in ledger} == {"batch"}
    assert Counter(row["batch_id"] for row in ledger) == Counter(r.batch_id for r in records)
    price = load_price_table()["gpt-4.1-mini"].batch()
    for row in ledger:
        cost = (row["input_tokens"] * price.input_per_mtok + row["output_tokens"] * 0.8) / 1e6
        assert row["cost_usd"] == pytest.approx(cost)
    assert summary["batch"]["requests"] == 15
    assert summary["batch"]["saved_usd"] == pytest.approx(summary["batch"]["cost_usd"])
    report = audit(Store(root), "b-res")
    assert report.ok, report.text()
    assert not Intents(Store(root).state_dir).pending("b-res"), "finished jobs are forgotten"


def test_invalid_batch_answers_are_rerouted_to_the_next_provider_in_a_next_round(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    corpus(tmp_path / "corpus", {"eu": 6})
    cheap = provider("cheap-eu", "eu", "gpt-4.1-nano", invalid_rate=1.0)
    dear = provider("dear-eu", "eu", "gpt-4.1-mini")
    summary = run_once(config(tmp_path, [cheap, dear]), "b-inv")
    assert summary["succeeded"] == 6
    ledger = stored(
        tmp_path / "out",
        "SELECT chunk_id, attempt, provider, mode, outcome FROM ledger ORDER BY chunk_id, attempt",
    )
    tries: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for row in ledger:
        tries[row["chunk_id"]].append((row["provider"], row["mode"], row["outcome"]))
    for chunk_id, seen in tries.items():
        # as sync does: one repair prompt at the endpoint, then the next provider; each in
        # the next round's job
        assert seen == [
            ("cheap-eu", "batch", "invalid_output"),
            ("cheap-eu", "batch", "invalid_output"),
            ("dear-eu", "batch", "ok"),
        ], chunk_id
    repairs = [r for r in sim_env.requests() if r.is_repair]
    assert len(repairs) == 6 and {r.endpoint for r in repairs} == {"cheap-eu"}
    assert audit(Store(tmp_path / "out"), "b-inv").ok


def worst_case_of_a_request(path: Path) -> float:
    """What the batch path holds for one chunk of ``path``'s corpus (a probe run that
    reserves one request and gives it back)."""
    cfg = load_config(path)
    store = Store(cfg.output.root)

    async def go() -> float:
        async with Run.open(cfg, decide(store, cfg, Request(run_id="probe"))) as run:
            assert isinstance(run.dispatcher, BatchDispatcher)
            first = next(c for b in run.batches() for c in b.chunks)
            req = run.dispatcher._reserve(first, None)
            assert req is not None
            run.budget.settle(req.hold, 0.0)
            return req.hold.amount_usd

    return asyncio.run(go())


def test_the_cap_holds_with_a_job_outstanding(tmp_path: Path, sim_env: SimulatorServer) -> None:
    """The worst case of each request at batch prices is held before the job is created:
    with room for three and a half, the job carries three; the rest go sync, where they
    wait for the job's holds to settle, then take what is left; the ledger stays under."""
    corpus(tmp_path / "corpus", {"eu": 8})
    sim = [provider("sim-eu", "eu", "gpt-4.1-mini")]
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "corpus").symlink_to(tmp_path / "corpus")
    cap = 3.5 * worst_case_of_a_request(config(tmp_path / "probe", sim))
    summary = run_once(config(tmp_path, sim, run_usd=cap), "b-cap")
    batched = [r for r in sim_env.requests() if r.batch_id is not None]
    assert len(batched) == 3, "only what the cap could hold went into the job"
    spent = sum(r["cost_usd"] for r in stored(tmp_path / "out", "SELECT cost_usd FROM ledger"))
    assert spent <= cap + 1e-12
    # The rest went sync (at twice the price) as far as the money left after the job went.
    assert summary["succeeded"] > 3
    assert summary["succeeded"] + summary["skipped"] == 8
    assert set(summary["not_succeeded_by_reason"]) <= {"budget_exhausted"}
    assert audit(Store(tmp_path / "out"), "b-cap").ok


def test_a_job_read_many_times_is_ledgered_once_per_request(
    tmp_path: Path, sim_env: SimulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    corpus(tmp_path / "corpus", {"eu": 5})
    sim = provider("sim-eu", "eu", "gpt-4.1-mini", batch_turnaround_s=2.0)
    path = config(tmp_path, [sim], routing={"batch_poll_s": 0.05, "batch_poll_max_s": 0.05})
    with caplog.at_level("INFO", logger="pipeline.batch_dispatch"):
        run_once(path, "b-poll")
    polls = [m for m in caplog.messages if m.startswith("batch job ") and " done (" in m]
    assert len(polls) >= 10, "the job was read many times"
    # each row's latency is the job's turnaround: from the create call to the answer read
    waits = stored(tmp_path / "out", "SELECT latency_ms FROM ledger WHERE mode = 'batch'")
    assert all(1800 <= r["latency_ms"] < 60_000 for r in waits), waits
    ledger = stored(tmp_path / "out", "SELECT attempt_id FROM ledger WHERE mode = 'batch'")
    assert len(ledger) == 5 == len({r["attempt_id"] for r in ledger})
    assert len(sim_env.requests()) == 5


def test_deadline_fallback_cancels_keeps_what_was_done_and_finishes_sync_in_time(
    tmp_path: Path, clocked_simulator: SimulatorServer, clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The job would take 8 s and the run must be done 8 s after it starts: the job is
    cancelled at 3.6 s (deadline, less 2 s for its requests sync, less twice the 1.2 s
    margin), with 5 of its 12 lines done (line i is done at 0.8 + 6.4·(i+1)/12 s); those
    are kept and billed once, the 7 others are done sync, before the deadline. One clock
    drives the simulator's job and the dispatcher."""
    monkeypatch.setenv("DOCROUTE_SIMULATOR_URL", clocked_simulator.url)
    corpus(tmp_path / "corpus", {"eu": 12})
    sim = provider("sim-eu", "eu", "gpt-4.1-mini", batch_turnaround_s=8.0)
    path = config(tmp_path, [sim], routing={"mode": "auto"}, schedule={"finish_within": "8s"})
    cfg = load_config(path)
    store = Store(cfg.output.root)

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await asyncio.sleep(0)

    async def go() -> tuple[float, float]:
        async with Run.open(cfg, decide(store, cfg, Request(run_id="b-late"))) as run:
            deadline = clock.now + 8.0
            dispatcher = BatchDispatcher(
                run.sync, store=run.store, mode="auto", deadline_at=deadline, poll_s=0.2,
                poll_max_s=0.2, clock=clock, sleep=sleep,
            )  # fmt: skip
            run.dispatcher = run.committer.dispatcher = dispatcher
            await drive(run.batches(), run.process_batch, 1)
            return deadline, clock.now

    deadline, finished = asyncio.run(go())
    assert finished < deadline, "the run finished after its deadline"
    root = tmp_path / "out"
    ledger = stored(root, "SELECT chunk_id, mode, outcome, cost_usd, batch_id FROM ledger")
    done = [r for r in ledger if r["mode"] == "batch" and r["outcome"] == "ok"]
    unfinished = [r for r in ledger if r["outcome"] == "batch_unfinished"]
    sync = [r for r in ledger if r["mode"] == "sync"]
    assert (len(done), len(unfinished)) == (5, 7)
    assert all(r["cost_usd"] == 0 for r in unfinished)
    assert {r["chunk_id"] for r in sync} == {r["chunk_id"] for r in unfinished}
    assert all(r["outcome"] == "ok" for r in sync)
    # billed once: the job's answered lines are exactly the simulator's batch records
    batched = [r for r in clocked_simulator.requests() if r.batch_id is not None]
    assert len(batched) == len(done) == 5
    assert audit(Store(root), "b-late").ok


def test_an_expired_job_leaves_its_requests_to_sync_calls(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    """The vendor expires the job before it ran a line: every request is booked
    ``batch_unfinished`` at $0 and its chunk is done sync; nothing is paid twice."""
    corpus(tmp_path / "corpus", {"eu": 4})
    sim = provider(
        "sim-eu", "eu", "gpt-4.1-mini", batch_turnaround_s=60.0, batch_expire_after_s=1.0
    )
    summary = run_once(config(tmp_path, [sim]), "b-exp")
    assert summary["succeeded"] == 4
    ledger = stored(tmp_path / "out", "SELECT mode, outcome, cost_usd FROM ledger")
    assert Counter((r["mode"], r["outcome"]) for r in ledger) == {
        ("batch", "batch_unfinished"): 4,
        ("sync", "ok"): 4,
    }
    assert sum(r["cost_usd"] for r in ledger if r["mode"] == "batch") == 0
    assert all(r.batch_id is None for r in sim_env.requests()), "no line ran in the job"


def test_a_create_call_lost_in_transit_is_found_not_resent(
    tmp_path: Path, sim_env: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job is created but the answer to the create call is lost (a timeout): the job
    is looked up by its metadata and read; nothing is sent twice."""
    from pipeline import errors
    from pipeline.providers.openai import OpenAIProvider

    real = OpenAIProvider.submit

    async def lost(self: OpenAIProvider, lines: Any, *, metadata: dict[str, str]) -> str:
        await real(self, lines, metadata=metadata)
        raise errors.Timeout("timed out waiting for the create call", provider=self.name)

    monkeypatch.setattr(OpenAIProvider, "submit", lost)
    corpus(tmp_path / "corpus", {"eu": 5})
    summary = run_once(config(tmp_path, [provider("sim-eu", "eu", "gpt-4.1-mini")]), "b-lost")
    assert summary["succeeded"] == 5
    records = sim_env.requests()
    assert len(records) == 5 and len({r.batch_id for r in records}) == 1
    assert all(r.batch_id for r in records), "nothing was sent sync beside the job"


def test_results_that_cannot_be_read_are_booked_at_worst_case_not_as_never_run(
    tmp_path: Path, sim_env: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job ended but its results cannot be downloaded: the vendor billed its requests,
    so they are booked ``uncertain`` at their reserved worst case (never $0), and the
    chunks are done sync."""
    from pipeline import errors
    from pipeline.providers.openai import OpenAIProvider

    async def unreadable(self: OpenAIProvider, job_id: str) -> Any:
        raise errors.ServerError("HTTP 500 on the output file", provider=self.name)

    monkeypatch.setattr(OpenAIProvider, "results", unreadable)
    corpus(tmp_path / "corpus", {"eu": 3})
    summary = run_once(config(tmp_path, [provider("sim-eu", "eu", "gpt-4.1-mini")]), "b-unr")
    assert summary["succeeded"] == 3
    ledger = stored(tmp_path / "out", "SELECT mode, outcome, cost_usd, reserved_usd FROM ledger")
    batch = [r for r in ledger if r["mode"] == "batch"]
    assert [r["outcome"] for r in batch] == ["uncertain"] * 3
    assert all(r["cost_usd"] == r["reserved_usd"] > 0 for r in batch)
    assert audit(Store(tmp_path / "out"), "b-unr").ok


def test_a_job_holding_none_of_its_requests_is_not_taken_for_it(
    tmp_path: Path, sim_env: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anthropic keeps no metadata, so a job found after a restart is matched by time and
    size; if its results hold none of the intent's requests, it was another job, and the
    requests are booked at their worst case, not as never run."""
    from pipeline.providers.anthropic import AnthropicProvider
    from pipeline.providers.batch import LineResult

    async def foreign(self: AnthropicProvider, job_id: str) -> list[LineResult]:
        return [LineResult("someone-elses-request", unfinished=True)]

    monkeypatch.setattr(AnthropicProvider, "results", foreign)
    corpus(tmp_path / "corpus", {"us": 3})
    ant = {**provider("ant-us", "us", "claude-haiku-4-5"), "kind": "anthropic"}
    run_once(config(tmp_path, [ant]), "b-foreign")
    batch = stored(tmp_path / "out", "SELECT outcome FROM ledger WHERE mode = 'batch'")
    assert [r["outcome"] for r in batch] == ["uncertain"] * 3


# Runs one batch-mode run in a subprocess that SIGKILLs itself the moment the job id would
# be recorded: the job exists at the provider, the intent on disk has no id.
KILLED_AFTER_CREATE = """
import os, signal, sys
from pipeline.store import intents
real = intents.Intents.save
def dying(self, intent):
    if intent.job_id is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, intent)
intents.Intents.save = dying
from tests.test_batch_mode import run_once
run_once(sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("resumed_as", ["batch", "sync"])
def test_kill_9_between_create_and_record_then_resume_never_submits_twice(
    tmp_path: Path,
    simulator: SimulatorServer,
    resumed_as: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Resumed in batch mode, or with the config switched to sync: either way the job the
    dead process created is found and read, and no request is sent again."""
    corpus(tmp_path / "corpus", {"eu": 6})
    sim = [provider("sim-eu", "eu", "gpt-4.1-mini", batch_turnaround_s=1.5)]
    path = config(tmp_path, sim)
    env = os.environ | {"DOCROUTE_SIMULATOR_URL": simulator.url, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_CREATE, str(path), "b-kill"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    root = tmp_path / "out"
    (intent,) = Intents(Store(root).state_dir).pending("b-kill")
    assert intent.job_id is None, "killed before the id was recorded"
    assert main(["runs", "--root", str(root)]) == 0  # reads only, and says what is left
    err = capsys.readouterr().err
    assert "run b-kill left 1 batch job(s) of 6 request(s)" in err
    assert "docroute run --resume b-kill" in err

    if resumed_as == "sync":
        path = config(tmp_path, sim, routing={"mode": "sync"})
    monkeypatch.setenv("DOCROUTE_SIMULATOR_URL", simulator.url)
    summary = run_once(path, "b-kill", resume=True)
    assert summary["succeeded"] == 6
    records = simulator.requests()
    assert len({r.batch_id for r in records}) == 1, "one job: it was found, not resubmitted"
    assert Counter(r.prompt_sha256 for r in records).most_common(1)[0][1] == 1
    ledger = stored(root, "SELECT attempt_id, batch_id FROM ledger WHERE provider IS NOT NULL")
    assert len(ledger) == 6 == len({r["attempt_id"] for r in ledger})
    assert {r["batch_id"] for r in ledger} == {records[0].batch_id}
    assert audit(Store(root), "b-kill").ok


def test_plan_prices_every_mode(tmp_path: Path) -> None:
    """All-sync, all-batch and auto for the deadline; a self-hosted model cheaper than
    any batch job stays sync in the batch figure."""
    from pipeline.plan import make_plan

    corpus(tmp_path / "corpus", {"eu": 4, "us": 4})
    sims = [provider("sim-eu", "eu", "gpt-4.1-mini"), provider("sim-us", "us", "gpt-4.1-mini")]
    short = make_plan(
        load_config(
            config(tmp_path, sims, routing={"mode": "auto"}, schedule={"finish_within": "10m"})
        )
    )
    assert short.by_mode["batch"] == pytest.approx(short.by_mode["sync"] / 2)
    assert short.by_mode["auto"] == short.by_mode["sync"], "10 minutes: too short to count on jobs"
    long = make_plan(
        load_config(
            config(tmp_path, sims, routing={"mode": "auto"}, schedule={"finish_within": "4h"})
        )
    )
    assert long.by_mode["auto"] == long.by_mode["batch"]

    local = {
        "name": "local-eu",
        "kind": "openai_compatible",
        "preset": "vllm",
        "region": "eu",
        "simulate": "always",
        "models": [
            {"id": "m", "input_per_mtok": 0.01, "output_per_mtok": 0.01, "context_window": 32768}
        ],
    }
    mixed = make_plan(load_config(config(tmp_path, [*sims, local])))
    eu_sync = next(x for x in mixed.endpoints if x.region == "eu").cost_usd
    us_sync = next(x for x in mixed.endpoints if x.region == "us").cost_usd
    assert mixed.by_mode["batch"] == pytest.approx(eu_sync + us_sync / 2)


def test_every_vendor_at_once_with_faults_keeps_every_promise(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    """OpenAI, Anthropic and Mistral jobs in one run, with 429s, 5xx and invalid answers
    inside the jobs, a tight cap and a deadline: residency, the cap, one result per chunk,
    and every request the simulator served ledgered exactly once (by its chunk's prompt)."""
    corpus(tmp_path / "corpus", {"eu": 14, "us": 14, "any": 8})
    faults = {"rate_429": 0.1, "rate_500": 0.05, "invalid_rate": 0.15, "batch_turnaround_s": 1.5}
    flaky = faults | {"invalid_rate": 0.5}  # the first choices: repairs fail, chunks move
    providers = [
        provider("oai-eu", "eu", "gpt-4.1-mini", **faults),
        {**provider("mis-eu", "eu", "mistral-small-latest", **flaky), "kind": "mistral"},
        {**provider("ant-us", "us", "claude-haiku-4-5", **faults), "kind": "anthropic"},
        provider("oai-us", "us", "gpt-4.1-nano", **flaky),
    ]
    path = config(
        tmp_path, providers, run_usd=0.02, routing={"mode": "auto"},
        schedule={"finish_within": "2m"},
    )  # fmt: skip
    summary = run_once(path, "b-all")
    root = tmp_path / "out"
    assert summary["chunks"] == 36
    assert summary["succeeded"] + summary["failed"] + summary["skipped"] == 36
    report = audit(Store(root), "b-all")
    assert report.ok, report.text()
    records = sim_env.requests()
    vendors = {r.endpoint for r in records if r.batch_id}
    # the cheapest at batch prices first (Mistral small in the EU, GPT-4.1 nano in the US);
    # the others take the rerouted chunks in a next round
    assert vendors == {"mis-eu", "oai-us", "oai-eu", "ant-us"}, vendors
    served = Counter(r.prompt_sha256 for r in records if r.status != 0)
    chunks = chunk_of_prompt(root)
    rows = stored(
        root,
        "SELECT chunk_id, count(*) AS n FROM ledger WHERE provider IS NOT NULL "
        "AND outcome NOT IN ('batch_unfinished', 'uncertain', 'interrupted', 'timeout', "
        "'connection_error') GROUP BY 1",
    )
    ledgered = {r["chunk_id"]: r["n"] for r in rows}
    # each answered request is one ledger row of its chunk, and each such row one request
    assert {chunks[p]["chunk_id"]: n for p, n in served.items()} == ledgered
    assert sum(r["cost_usd"] for r in stored(root, "SELECT cost_usd FROM ledger")) <= 0.02


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_run_in_batch_mode_logs_each_jobs_progress(
    tmp_path: Path,
    sim_env: SimulatorServer,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through the Prefect flow: a job's creation and its reads (requests done of the
    total) are in the flow run's log, and the run succeeds at batch prices."""
    from flows.nightly import nightly_batch

    corpus(tmp_path / "corpus", {"eu": 3})
    path = config(tmp_path, [provider("sim-eu", "eu", "gpt-4.1-mini")])
    with caplog.at_level("INFO", logger="prefect"):
        summary = asyncio.run(nightly_batch(config_path=str(path)))
    assert summary["succeeded"] == 3 and summary["batch"]["answered"] == 3
    # The flow run logger's lines, wherever this Prefect sends them: to the console (stdout
    # or stderr, by its settings) and, when its loggers propagate, to the log capture.
    printed = capfd.readouterr()
    console = [ln for ln in (printed.out + printed.err).splitlines() if "| Flow run '" in ln]
    captured = [r.getMessage() for r in caplog.records if r.name == "prefect.flow_runs"]
    log = console + captured
    assert any("batch job " in m and "3 request(s) at sim-eu" in m for m in log), log
    assert any("completed, 3/3 done (0 failed)" in m for m in log), log
