"""``docroute plan`` and ``run --dry-run``: the corpus chunked as a run chunks it, priced at
each chunk's first endpoint, before any call; the estimate from the ledger's history is
within 15% of what the sample run actually spends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from pipeline.config import load_config
from pipeline.plan import DEFAULT_OUTPUT_FRACTION, make_plan, render_plan
from pipeline.store import Store
from tests.conftest import sample_config_data, write_config


def test_without_history_the_default_is_used_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sample_config_data())
    assert main(["plan", "--config", str(config), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    basis = plan["basis"]
    assert basis["source"] == "default" and basis["attempts_per_chunk"] == 1
    assert basis["output_tokens_per_attempt"] == DEFAULT_OUTPUT_FRACTION * 800
    assert "no history" in basis["describe"]
    assert plan["chunks"] >= 40 and plan["total"]["chunks"] == plan["chunks"] - 2
    assert {(u["path"].split("/")[0], u["reason"]) for u in plan["unroutable"]} == {
        ("ch", "no_endpoint_in_region")
    }
    assert any("'ch'" in w for w in plan["warnings"])
    assert plan["budget_covered"] is True
    by_region = {line["endpoint"].split("/")[0]: line["region"] for line in plan["endpoints"]}
    assert by_region == {"llama-eu": "eu", "openai-us": "us"}  # the cheapest of each region
    assert not (tmp_path / "out").exists(), "a plan writes nothing"

    assert main(["plan", "--config", str(config)]) == 0
    table = capsys.readouterr().out
    assert "no history" in table and "covered" in table and "no_endpoint_in_region" in table


def test_documents_without_an_endpoint_say_why(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for rel, text in {
        "eu/long.md": "A clause of the contract. " * 400,
        "ch/swiss.md": "Swiss.",
        "misc/unruled.md": "No rule matches.",
    }.items():
        (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
        (corpus / rel).write_text(text)
    data = sample_config_data()
    data.pop("output")
    data["corpus"].pop("residency_manifest")
    eu = [p for p in data["providers"] if p["name"] == "llama-eu"]
    eu[0]["models"][0]["context_window"] = 1024  # prompt + 800 max output never fits
    data["providers"] = eu
    plan = make_plan(load_config(write_config(tmp_path, data, corpus)), budget_usd=0.01)
    reasons = {u.path: (u.reason, u.chunks) for u in plan.unroutable}
    assert reasons["ch/swiss.md"] == ("no_endpoint_in_region", 1)
    assert reasons["misc/unruled.md"] == ("residency_deny", 1)
    assert reasons["eu/long.md"][0] == "too_long"
    assert plan.total.chunks == 0 and plan.total.cost_usd == 0 and plan.budget_covered
    assert "residency_deny: rule default:deny allows no region" in render_plan(plan, "table")


@pytest.mark.usefixtures("prefect_harness")
def test_estimate_from_history_is_within_15_percent_of_the_sample_run(
    tmp_path: Path, sim_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.nightly import nightly_batch

    config = write_config(tmp_path, sample_config_data())
    before = make_plan(load_config(config))
    assert before.basis.source == "default"

    summary = asyncio.run(nightly_batch(config_path=str(config)))
    store = Store(tmp_path / "out")
    actual = store.read(
        "SELECT sum(cost_usd) FROM ledger WHERE run_id = ?", [summary["run_id"]]
    ).rows[0][0]

    # priced as a run that asks again (``--full``): the history, not the reuse, is tested
    plan = make_plan(load_config(config, overrides={"reuse.across_runs": False}))
    assert plan.basis.source == "history" and plan.basis.runs == 1
    assert plan.chunks == summary["chunks"], "the plan chunks the corpus as the run did"
    assert plan.total.cost_usd == pytest.approx(actual, rel=0.15)
    per_region = dict(
        store.read(
            "SELECT region, sum(cost_usd) FROM ledger WHERE run_id = ? AND provider IS NOT NULL "
            "GROUP BY 1",
            [summary["run_id"]],
        ).rows
    )
    planned = {r: sum(x.cost_usd for x in plan.endpoints if x.region == r) for r in per_region}
    for region, spent in per_region.items():
        assert planned[region] == pytest.approx(spent, rel=0.15), region

    # run --dry-run prints the same plan, connects nothing and writes no run record.
    runs = store.read("SELECT count(*) FROM runs").rows[0][0]
    requests = len(sim_env.requests())
    capsys.readouterr()
    assert main(["run", "--dry-run", "--full", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan · config") and "from history" in out
    assert f"{plan.total.cost_usd:.4f}" in out
    assert store.read("SELECT count(*) FROM runs").rows[0][0] == runs
    assert len(sim_env.requests()) == requests

    # Answer sizes come from the history now: the sample's answers are ~150 tokens.
    assert not [w for w in plan.warnings if "max_output_tokens" in w]
    tight = make_plan(load_config(config, overrides={"task.max_output_tokens": 120}))
    (room,) = [w for w in tight.warnings if "max_output_tokens" in w]
    assert "task.max_output_tokens is 120" in room and "answers in the latest runs" in room


def _room(plan: Any) -> list[str]:
    return [w for w in plan.warnings if w.startswith("task.max_output_tokens")]


def test_plan_warns_when_the_output_limit_is_below_the_schemas_typical_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = sample_config_data()
    data["task"]["max_output_tokens"] = 256
    plan = make_plan(load_config(write_config(tmp_path, data)))
    (room,) = _room(plan)
    assert "is 256" in room and "the schema's example" in room and "at least 512" in room
    assert main(["plan", "--config", str(tmp_path / "docroute.yaml")]) == 0
    assert "warning    task.max_output_tokens is 256" in capsys.readouterr().out

    data["task"]["max_output_tokens"] = 800
    assert _room(make_plan(load_config(write_config(tmp_path, data)))) == []


@pytest.mark.usefixtures("prefect_harness")
def test_plan_warns_after_answers_were_cut_off_until_the_limit_is_raised(
    tmp_path: Path, sim_env: Any
) -> None:
    from flows.nightly import nightly_batch

    data = sample_config_data()
    data["task"]["max_output_tokens"] = 48  # the sample's answers need ~150
    config = write_config(tmp_path, data)
    asyncio.run(nightly_batch(config_path=str(config)))
    cut = (
        Store(tmp_path / "out")
        .read("SELECT count(*), max(output_tokens) FROM ledger WHERE outcome = 'output_truncated'")
        .rows[0]
    )
    assert cut[0] > 0

    (room,) = _room(make_plan(load_config(config)))
    assert f"{cut[0]} answer(s) in the latest runs were cut off at about {cut[1]:,}" in room
    assert f"at least {-(-2 * cut[1] // 64) * 64:,}" in room
    assert _room(make_plan(load_config(config, overrides={"task.max_output_tokens": 1024}))) == []
