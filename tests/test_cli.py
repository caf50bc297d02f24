"""The docroute command as a user runs it: exit codes and messages, read-only SQL, run listing."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from flows.cli import _parser, main
from pipeline.models import LedgerEntry
from pipeline.store import RunRecord, Store
from tests.conftest import sample_config_data, write_config

REPO = Path(__file__).resolve().parents[1]


def _ledger(run_id: str, provider: str, cost: float) -> LedgerEntry:
    return LedgerEntry(
        run_id=run_id,
        chunk_id="c1",
        attempt=1,
        provider=provider,
        model="m",
        region="eu",
        mode="sync",
        started_at=time.time(),
        latency_ms=12.0,
        input_tokens=100,
        output_tokens=20,
        cached_input_tokens=0,
        cache_write_tokens=0,
        cost_usd=cost,
        reserved_usd=cost * 2,
        outcome="ok",
        http_status=200,
        error=None,
    )


def _record(status: str, **counts: Any) -> RunRecord:
    """Run ``r1``'s record with ``status``; ``counts`` override the zero counts."""
    now = time.time()
    fields: dict[str, Any] = dict(
        run_id="r1",
        parent_run_id=None,
        flow="nightly_batch",
        status=status,
        started_at=now,
        finished_at=None,
        updated_at=now,
        config_hash="x",
        corpus="c",
        schema_name="chunk_summary",
        budget_usd=1.0,
        spend_usd=0.0,
        documents=0,
        document_errors=0,
        chunks=0,
        succeeded=0,
        failed=0,
        skipped=0,
        message=None,
    )
    return RunRecord(**(fields | counts))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = Store(tmp_path / "out")
    store.write_rows(
        "ledger", "r1", [_ledger("r1", "openai-eu", 0.25), _ledger("r1", "llama-eu", 0.5)]
    )
    now = time.time()
    store.write_run(
        _record(
            "completed_with_failures",
            finished_at=now,
            spend_usd=0.75,
            documents=3,
            chunks=5,
            succeeded=4,
            failed=1,
        )
    )
    store.refresh_catalog()
    return tmp_path / "out"


def test_sql_answers_in_each_format(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = "SELECT provider, sum(cost_usd) AS usd FROM ledger GROUP BY 1 ORDER BY 1"
    assert main(["sql", q, "--root", str(root), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"provider": "llama-eu", "usd": 0.5},
        {"provider": "openai-eu", "usd": 0.25},
    ]
    assert main(["sql", q, "--root", str(root), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "provider,usd",
        "llama-eu,0.5",
        "openai-eu,0.25",
    ]
    assert main(["sql", q, "--root", str(root)]) == 0
    table = capsys.readouterr().out
    assert "llama-eu" in table and "(2 rows)" in table


@pytest.mark.parametrize(
    "statement, expected",
    [
        ("COPY ledger TO '/tmp/docroute-leak.csv'", "COPY statements are refused"),
        ("INSERT INTO ledger SELECT * FROM ledger", "INSERT statements are refused"),
        ("SELECT * FROM read_csv('/etc/passwd')", "can only read"),
        ("ATTACH '/tmp/other.duckdb'", "refused"),
        ("SELECT 1; SELECT 2", "one statement"),
    ],
)
def test_sql_is_read_only(
    root: Path, capsys: pytest.CaptureFixture[str], statement: str, expected: str
) -> None:
    assert main(["sql", statement, "--root", str(root)]) == 2
    assert expected in capsys.readouterr().err
    assert not Path("/tmp/docroute-leak.csv").exists()


def test_runs_lists_status_counts_and_spend(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--root", str(root), "--format", "json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert (run["run_id"], run["status"], run["succeeded"], run["failed"]) == (
        "r1",
        "completed_with_failures",
        4,
        1,
    )
    assert run["spend_usd"] == 0.75


def test_no_data_yet_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "SELECT 1", "--root", str(tmp_path / "none")]) == 2
    assert "no docroute data under" in capsys.readouterr().err


def test_bad_config_stops_the_run_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = sample_config_data()
    data["routing"]["batch_sise"] = 10
    config = write_config(tmp_path, data)
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "routing.batch_sise: unknown field" in err and "batch_size" in err
    assert not (tmp_path / "out").exists(), "nothing may be written for a bad config"


def test_missing_config_names_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 2
    assert "pass --config FILE" in capsys.readouterr().err


def test_rerun_of_an_unknown_run_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sample_config_data())
    assert main(["rerun", "20990101-000000-abcdef", "--config", str(config)]) == 2
    assert "run '20990101-000000-abcdef' not found" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("runs/*/*.parquet"))


def test_bad_budget_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--budget", "ten"])
    assert info.value.code == 2
    assert "expected an amount in USD like 2.50, got 'ten'" in capsys.readouterr().err


def test_a_killed_first_run_is_listed_as_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 of the very first run on a root leaves parts and a journal, no catalog."""
    from pipeline.store.journal import Journal

    store = Store(tmp_path / "out")
    store.write_run(_record("running"))
    journal = Journal.open(store.state_dir, "r1", "r1/b00001")
    journal.append(_ledger("r1", "openai-eu", 0.25))
    journal.close()  # the process died: nobody holds it
    assert not store.catalog_path.exists()
    written = store.part_files()

    assert main(["runs", "--root", str(store.root), "--format", "json"]) == 0
    listed = capsys.readouterr()
    (run,) = json.loads(listed.out)
    assert run["run_id"] == "r1" and run["status"] == "interrupted"
    # Reading wrote nothing: the journal is still there, and the reader was told so.
    assert "journal of run r1 is not recovered" in listed.err and "docroute recover" in listed.err
    assert store.part_files() == written and store.latest_run("r1").status == "running"

    assert main(["recover", "--root", str(store.root)]) == 0
    assert "recovered: 1 ledger entry" in capsys.readouterr().out
    assert main(["sql", "SELECT sum(cost_usd) AS c FROM ledger", "--root", str(store.root)]) == 0
    queried = capsys.readouterr()
    assert "0.25" in queried.out and queried.err == ""
    assert store.latest_run("r1").status == "interrupted"


def test_an_empty_resume_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, sample_config_data())
    assert main(["run", "--config", str(config), "--resume", ""]) == 2
    assert "--resume" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "no run was started"


def test_a_missing_corpus_is_one_line_and_exit_2_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sample_config_data(), corpus=tmp_path / "nowhere")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "corpus.path" in err and "nowhere" in err and "does not exist" in err
    assert not (tmp_path / "out").exists(), "nothing started, nothing written"


def test_a_run_held_by_a_live_process_is_refused_before_prefect_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.store.journal import RunLock

    config = write_config(tmp_path, sample_config_data())
    store = Store(tmp_path / "out")
    lock = RunLock.acquire(store.state_dir, "busy-1")  # another live process, as far as
    try:  # flock goes: each open file description is its own holder
        assert main(["run", "--config", str(config), "--run-id", "busy-1"]) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "busy-1 is still running" in err


def test_the_parser_loads_no_sdk_prefect_or_store() -> None:
    """``--help`` is quick because ``flows.cli`` imports nothing heavy (issue 15)."""
    heavy = ("anthropic", "openai", "mistralai", "prefect", "pydantic", "duckdb", "pyarrow")
    probe = f"import flows.cli, sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert ast.literal_eval(done.stdout) == []


def test_version_is_the_installed_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"docroute {metadata.version('docroute')}\n"


def test_every_command_explains_itself() -> None:
    """Each command has an example; each option a help text that names its default."""
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) >= {"run", "plan", "rerun", "runs", "sql", "serve"}
    for name, command in commands.choices.items():
        assert f"examples:\n  docroute {name}" in (command.epilog or ""), name
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"docroute {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help"
            if action.option_strings and action.nargs != 0:  # flags default to off
                assert "default" in action.help, f"{where} does not say its default"
            if "%(default)" not in action.help and action.default not in (None, False, []):
                pytest.fail(f"{where}: default {action.default!r} is not shown")


def test_run_dry_run_prints_the_plan_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sample_config_data())
    assert main(["run", "--config", str(config), "--dry-run", "--format", "json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert main(["plan", "--config", str(config), "--format", "json"]) == 0
    assert dry == json.loads(capsys.readouterr().out)
    assert {"chunks", "endpoints", "total", "budget_covered", "basis"} <= dry.keys()
    assert main(["run", "--config", str(config), "--dry-run"]) == 0
    assert "covered" in capsys.readouterr().out  # the table, as before
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"


def test_format_without_dry_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sample_config_data())
    assert main(["run", "--config", str(config), "--format", "json"]) == 2
    assert "--format only applies with --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "no run was started"
