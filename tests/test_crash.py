"""Crash safety: a run killed with SIGKILL at any moment loses at most the calls in flight;
every completed call's cost and every finished chunk's result reach the store (journal +
recovery), exactly once, and resuming finishes the run without paying twice."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.cli import main
from pipeline.models import LedgerEntry
from pipeline.sim_profiles import NO_RESPONSE
from pipeline.simulator import SimulatorServer
from pipeline.store import Store
from pipeline.store.journal import JOURNAL_DIR, Journal, read_entries, read_journal, recover
from tests.conftest import EXAMPLES, REPO

CONCURRENCY = 8

# Runs `docroute <args>` in a subprocess; with "flush N" it SIGKILLs itself in the middle of
# its N-th Parquet write (half the file on disk under its temporary name), the moment a
# power cut or OOM kill would hurt most.
RUNNER = """
import io, os, signal, sys
from pipeline.store import parts
mode, nth = sys.argv[1], int(sys.argv[2])
if mode == "flush":
    real, count = parts.write_atomic, [0]
    def dying(final, table):
        count[0] += 1
        if count[0] == nth:
            import pyarrow.parquet as pq
            buf = io.BytesIO()
            pq.write_table(table, buf)
            with open(final.with_name("." + final.name + ".crash.tmp"), "wb") as fh:
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(final, table)
    parts.write_atomic = dying
from flows.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _corpus(folder: Path, n: int) -> None:
    words = " ".join(
        p.read_text() for p in sorted((EXAMPLES / "corpus" / "eu").rglob("*.*"))
    ).split()
    folder.mkdir(parents=True)
    for i in range(n):
        body = " ".join(words[i * 37 % 5000 : i * 37 % 5000 + 120])
        (folder / f"doc-{i:04d}.txt").write_text(f"Record {i}. {body}\n")


def _config(tmp: Path, *, batch_size: int = 10_000, parallel_batches: int = 2) -> Path:
    import yaml

    provider: dict[str, object] = {
        "name": "sim-eu",
        "kind": "openai",
        "region": "eu",
        "simulate": "always",
        "simulator": {"latency_ms": [20, 80], "invalid_rate": 0.1},
        "models": [{"id": "gpt-4.1-mini"}],
    }
    data = {
        "corpus": {"path": str(tmp / "corpus"), "residency_default": ["eu"]},
        "task": {"schema": "chunk_summary", "max_output_tokens": 600},
        "budget": {"run_usd": 100},
        "routing": {
            "concurrency": CONCURRENCY,
            "batch_size": batch_size,
            "parallel_batches": parallel_batches,
        },
        "providers": [provider],
        "output": {"root": str(tmp / "out")},
    }
    path = tmp / "docroute.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _journal_lines(root: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (root / JOURNAL_DIR).glob("*/*.jsonl"))


#: Bookings of calls whose answer the client never read: killed or cut in flight
#: (`interrupted`), or left without an answer it could read (`uncertain`, e.g. a timeout).
WORST = ("interrupted", "uncertain")


def _answered(sim: SimulatorServer) -> int:
    return sum(r.status != NO_RESPONSE for r in sim.requests())


def _attempts_kept(root: Path, run_id: str) -> int:
    """Completed provider attempts of ``run_id`` on disk: in ledger parts, or journaled
    (an attempt still in flight is journaled as ``interrupted`` until it completes).
    Counted once each: a kill between a batch's part and its journal's removal leaves an
    attempt in both until the next run recovers the journal."""
    kept: set[str] = set()
    for path in (root / JOURNAL_DIR / run_id).glob("*.jsonl"):
        entries, _ = read_journal(path)
        kept |= {
            e.attempt_id for e in entries if e.provider is not None and e.outcome != "interrupted"
        }
    parts = Store(root).read(
        "SELECT attempt_id FROM ledger WHERE run_id = ? AND provider IS NOT NULL "
        "AND outcome <> 'interrupted'",
        [run_id],
    )
    return len(kept | {str(a) for (a,) in parts.rows})


@pytest.mark.usefixtures("prefect_harness")
def test_kill_9_at_a_dozen_points_then_resume_finishes_every_chunk_exactly_once(
    tmp_path: Path,
) -> None:
    """12 kills (6 in the middle of a Parquet write, 6 at random moments with calls in
    flight), each followed by `docroute run --resume`: in the end exactly one result per
    chunk, no attempt twice, and the ledger's tokens equal the simulator's own count."""
    from prefect.settings import PREFECT_API_URL

    _corpus(tmp_path / "corpus", 150)
    # One batch at a time: a Parquet write then never overlaps calls in flight, so the
    # flush kills lose no answer and the oracle can be exact.
    config = _config(tmp_path, batch_size=5, parallel_batches=1)
    root, run_id = tmp_path / "out", "crash-1"
    rng = random.Random(20261121)
    points = ["flush"] * 6 + ["random"] * 6
    rng.shuffle(points)
    kills: list[str] = []
    with SimulatorServer() as sim:
        env = os.environ | {
            "DOCROUTE_SIMULATOR_URL": sim.url,
            "PYTHONPATH": str(REPO),
            "PREFECT_API_URL": PREFECT_API_URL.value() or "",
        }
        for attempt in range(len(points) + 1):
            kind = points[attempt] if attempt < len(points) else "none"
            which = ["--run-id", run_id] if attempt == 0 else ["--resume", run_id]
            nth = rng.randint(2, 10) if kind == "flush" else 0
            # Answers of earlier processes that raced a kill are served but booked only as
            # `interrupted`: they never count as kept, so this process waits for its own.
            lag = _answered(sim) - _attempts_kept(root, run_id)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RUNNER,
                    kind,
                    str(nth),
                    "run",
                    "--config",
                    str(config),
                    *which,
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if kind == "random":
                start, wanted = len(sim.requests()), rng.randint(3, 25)
                # Generous bounds: they catch a hang, not a slow machine (a busy 2-core box
                # took over 20 s to journal a few answers).
                deadline = time.monotonic() + 180
                while len(sim.requests()) < start + wanted and proc.poll() is None:
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
                # Calls in flight stay in flight; every answer already sent reaches the
                # journal, so the oracle below counts exactly what was paid for.
                sim.hold()
                time.sleep(0.05)  # an answer already past the hold gets logged meanwhile
                answered = _answered(sim) - lag
                deadline = time.monotonic() + 180  # past request_timeout_s: then `uncertain`
                while (kept := _attempts_kept(root, run_id)) < answered and proc.poll() is None:
                    assert time.monotonic() < deadline, (kept, answered, lag)
                    time.sleep(0.05)  # each look reads the journals and the ledger parts
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                sim.release(drop=True)  # the held calls die with the client
            else:
                proc.wait(timeout=180)
            if proc.returncode == -signal.SIGKILL:
                kills.append(kind)
                continue
            err = proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert proc.returncode == 0, err
            break

        store = Store(root)
        record = store.latest_run(run_id)
        assert record is not None and record.status in ("succeeded", "completed_with_failures")
        assert len(kills) >= 10 and kills.count("flush") >= 5, kills
        chunks = store.read(
            "SELECT count(*), count(DISTINCT chunk_id) FROM chunks WHERE run_id = ?", [run_id]
        ).rows[0]
        results = store.read(
            "SELECT count(*), count(DISTINCT chunk_id) FROM results WHERE run_id = ?", [run_id]
        ).rows[0]
        assert chunks == results == (150, 150)
        ledger = store.read(
            "SELECT count(*), count(DISTINCT attempt_id), sum(input_tokens), sum(output_tokens) "
            "FROM ledger WHERE run_id = ?",
            [run_id],
        ).rows[0]
        assert ledger[0] == ledger[1], "no attempt recorded twice"
        # The ledger's tokens are the simulator's own count, but for answers that were sent
        # while the client was being killed (a send that races the hold above): such a call
        # was in flight for the client, and must be booked `interrupted` at its worst case.
        rows = store.read(
            "SELECT l.outcome, l.input_tokens, l.output_tokens, c.text FROM ledger l "
            "JOIN chunks c USING (run_id, chunk_id) WHERE l.run_id = ? AND l.provider IS NOT NULL",
            [run_id],
        ).rows
        booked = Counter(
            (_sha(text), inp, out) for outcome, inp, out, text in rows if outcome not in WORST
        )
        served = Counter(
            (r.prompt_sha256, r.prompt_tokens, r.completion_tokens)
            for r in sim.requests()
            if r.status != NO_RESPONSE
        )
        assert not booked - served, "no tokens the provider did not serve"
        unbooked = served - booked
        worst = Counter(_sha(t) for o, _, _, t in rows if o in WORST)
        for sha, _, _ in unbooked.elements():
            assert worst[sha] >= 1, "an unjournaled answer is booked at its worst case"
        # Only calls in flight at a kill can race it (how many do depends on the load).
        assert sum(unbooked.values()) <= CONCURRENCY * kills.count("random"), unbooked
        # Calls that died in flight are in the ledger at their reserved worst case (the
        # provider may have billed them), so a resumed run counted them against its cap.
        lost = store.read(
            "SELECT count(*), count(*) FILTER (cost_usd = reserved_usd AND cost_usd > 0) "
            "FROM ledger WHERE run_id = ? AND outcome IN ('interrupted', 'uncertain')",
            [run_id],
        ).rows[0]
        dropped = sum(r.status == NO_RESPONSE for r in sim.requests())
        assert lost[0] == lost[1] and lost[0] >= dropped > 0, (lost, dropped)
        assert record.spend_usd == pytest.approx(
            store.read("SELECT sum(cost_usd) FROM ledger WHERE run_id = ?", [run_id]).rows[0][0]
        )
        assert main(["audit", run_id, "--root", str(root)]) == 0


def _entry(i: int) -> LedgerEntry:
    return LedgerEntry(
        run_id="r1",
        chunk_id=f"c{i}",
        attempt=1,
        provider="p",
        model="m",
        region="eu",
        mode="sync",
        started_at=0.0,
        latency_ms=1.0,
        input_tokens=10,
        output_tokens=5,
        cached_input_tokens=0,
        cache_write_tokens=0,
        cost_usd=0.01,
        reserved_usd=0.02,
        outcome="ok",
        http_status=200,
        error=None,
        attempt_id=f"a{i}",
    )


def test_a_crash_between_part_and_journal_removal_is_not_counted_twice(tmp_path: Path) -> None:
    store = Store(tmp_path)
    journal = Journal.open(store.root, "r1", "r1/b00001")
    for i in range(5):
        journal.append(_entry(i))
    store.write_rows("ledger", "r1", [_entry(i) for i in range(3)])  # part written, then "crash"
    journal.close()
    assert recover(store) == 2
    rows = store.read("SELECT count(*), sum(cost_usd) FROM ledger WHERE run_id = 'r1'").rows[0]
    assert rows[0] == 5 and rows[1] == pytest.approx(0.05)


def test_recovered_answers_enter_the_reuse_index(tmp_path: Path) -> None:
    """A result a killed run journaled is reusable the next night: recovery writes its
    ``answers`` row with it (a paid answer the index missed would be paid again)."""
    from dataclasses import replace

    from pipeline.family import ReuseIndex
    from tests.test_store import result

    store = Store(tmp_path)
    journal = Journal.open(store.root, "r1", "r1/b00001")
    for i in range(2):
        journal.append_result(replace(result(i, "r1"), idem_key=f"k{i}"))
    journal.close()  # killed before the batch's parts
    recover(store)
    assert store.read("SELECT count(*) FROM results WHERE run_id = 'r1'").rows[0][0] == 2
    index = ReuseIndex.load(store, "tonight", across_runs=True)
    assert index.paid_by("k0") == ("r1", "eu-west") and index.paid_by("k1") == ("r1", "eu-west")


def test_a_live_journal_is_left_alone_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    store = Store(tmp_path)
    live = Journal.open(store.root, "r1", "r1/b00001")
    live.append(_entry(0))
    assert recover(store) == 0, "a writer holds it"
    live.close()
    with live.path.open("a") as f:
        f.write('{"run_id": "r1", "chunk_id": "c9", "attem')  # killed mid-write
    assert [e.attempt_id for e in read_entries(live.path)] == ["a0"]
    assert recover(store) == 1


def test_journal_lines_are_whole_json(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, "r1", "r1/b1")
    journal.append(_entry(1))
    journal.close()
    (line,) = journal.path.read_text().splitlines()
    assert json.loads(line)["attempt_id"] == "a1"


def test_a_call_in_flight_at_a_kill_is_ledgered_at_its_reserved_worst_case(
    tmp_path: Path,
) -> None:
    import dataclasses

    store = Store(tmp_path)
    journal = Journal.open(store.root, "r1", "r1/b00001")
    for i in range(3):  # each call journaled as it starts …
        started = dataclasses.replace(
            _entry(i), outcome="interrupted", cost_usd=0.02, input_tokens=0, output_tokens=0
        )
        journal.append(started)
    journal.append(_entry(0))  # … and again when it completes: calls 1 and 2 never did
    journal.append(_entry(2))
    journal.close()  # the process dies

    assert recover(store) == 3
    rows = store.read(
        "SELECT attempt_id, outcome, cost_usd, input_tokens FROM ledger ORDER BY attempt_id"
    ).rows
    assert rows == [("a0", "ok", 0.01, 10), ("a1", "interrupted", 0.02, 0), ("a2", "ok", 0.01, 10)]


# -- recovery racing live writers (real files, real threads) ---------------------------------

#: Iterations of each race: enough that, with threads switching every microsecond, the
#: windows the journal closes (create → lock, list → open → lock) are hit many times.
RACE_ROUNDS = 400


@contextmanager
def _fine_thread_switching() -> Iterator[None]:
    """Threads switch every microsecond: a gap of a few bytecodes is hit, not skipped."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _race(writer: Callable[[], None], other: Callable[[threading.Event], None]) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=other, args=(stop,))
    with _fine_thread_switching():
        thread.start()
        try:
            writer()
        finally:
            stop.set()
            thread.join(timeout=60)
    assert not thread.is_alive()


# Opens, writes and commits argv[2] journals of run r1 under argv[1], as fast as it can.
JOURNAL_WRITER = """
import sys
from pathlib import Path
from pipeline.store.journal import Journal
for i in range(int(sys.argv[2])):
    journal = Journal.open(Path(sys.argv[1]), "r1", f"r1/b{i:05d}")
    journal._write({"i": i})
    journal.commit()
"""


def test_no_visible_journal_is_ever_unlocked_while_its_writer_lives(tmp_path: Path) -> None:
    """What ``recover`` does (list, open, try the lock), in this process, never wins a
    journal of a writer in another process: the writer locks it before it has its name."""
    folder = tmp_path / JOURNAL_DIR / "r1"
    folder.mkdir(parents=True)
    stolen: list[str] = []
    writer = subprocess.Popen(
        [sys.executable, "-c", JOURNAL_WRITER, str(tmp_path), str(RACE_ROUNDS * 10)], cwd=REPO
    )
    deadline = time.monotonic() + 120
    while writer.poll() is None:
        assert time.monotonic() < deadline, "the writer never finished"
        for name in os.listdir(folder):  # as recover's glob, only faster: more tries
            path = folder / name
            if not name.endswith(".jsonl"):
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            finally:  # closing drops the lock if we took it
                linked = _names(path, fd)
                os.close(fd)
            if linked:  # locked while still named: its writer had not locked it yet
                stolen.append(name)
    assert writer.returncode == 0
    assert stolen == []
    assert not list(folder.iterdir()), "no temporary name is left behind"


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def test_recovery_skips_journals_that_vanish_between_listing_and_opening(
    tmp_path: Path,
) -> None:
    """Writers commit (remove) journals while ``recover`` runs over them: it never fails,
    recovers nothing that was committed, and loses nothing that was not."""
    store = Store(tmp_path)
    failures: list[BaseException] = []
    recovered: list[int] = []

    def recovering(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                recovered.append(recover(store))
            except BaseException as exc:  # the test reports it
                failures.append(exc)
                return

    def writing() -> None:
        window: list[Journal] = []  # a few journals open at once, as batches in parallel
        for i in range(RACE_ROUNDS):
            journal = Journal.open(tmp_path, "r1", f"r1/b{i:05d}")
            journal.append(_entry(i))
            window.append(journal)
            if len(window) > 8:
                window.pop(0).commit()
        window[-1].close()  # the last one is left uncommitted, as by a kill
        for journal in window[:-1]:
            journal.commit()

    _race(writing, recovering)
    assert failures == []
    recover(store)  # whatever the racing recovery did not reach yet
    rows = store.read("SELECT attempt_id FROM ledger WHERE run_id = 'r1'").rows
    assert rows == [(f"a{RACE_ROUNDS - 1}",)]
