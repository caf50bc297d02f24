"""The one decision of which run a command opens (``pipeline.opening``), and its check
under the run's lock."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.family import Selection, Versions
from pipeline.opening import Opening, Request, decide
from pipeline.run import Run
from pipeline.store import RunRecord, Store
from schemas import get_schema
from tests.conftest import sample_config_data, write_config
from tests.test_store import result, run_record


def _record(cfg: Any, run_id: str, status: str, **fields: Any) -> RunRecord:
    """A record of ``run_id`` made under ``cfg`` (so its versions match a resume of it)."""
    versions = Versions.of(cfg, get_schema(cfg.task.schema_name))
    now = time.time()
    made = dict(
        status=status,
        started_at=now - 60,
        updated_at=now,
        config_hash=cfg.fingerprint(),
        schema_name=versions.schema_name,
        schema_version=versions.schema_version,
        prompt_version=versions.prompt_version,
        model_policy=versions.model_policy,
    )
    return run_record(run_id, **(made | fields))


def test_each_kind_is_decided_from_the_arguments_and_the_root(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, sample_config_data()))
    store = Store(cfg.output.root)

    new = decide(store, cfg, Request())
    assert (new.kind, new.family_id, new.selection) == ("new", new.run_id, None)
    assert not (tmp_path / "out").exists(), "deciding wrote nothing"

    store.write_run(_record(cfg, "p1", "completed_with_failures", family_id="p1"))
    store.write_results("p1", [result(0, "p1", status="failed")])
    rerun = decide(store, cfg, Request(parent_run_id="p1", reasons=("no_route",)))
    assert (rerun.kind, rerun.parent_run_id, rerun.family_id, rerun.flow) == (
        "rerun",
        "p1",
        "p1",
        "rerun_failed",
    )
    assert rerun.selection == Selection("p1", ("failed", "skipped"), ("no_route",), ())

    # The rerun was killed: resuming it keeps its selection, family and first start.
    child = _record(
        cfg,
        "c1",
        "interrupted",
        parent_run_id="p1",
        family_id="p1",
        flow="rerun_failed",
        selection=rerun.selection.to_json(),
    )
    store.write_run(child)
    resumed = decide(store, cfg, Request(resume="c1"))
    assert dataclasses.replace(resumed, started_at=None) == Opening(
        run_id="c1",
        kind="resume",
        family_id="p1",
        flow="rerun_failed",
        parent_run_id="p1",
        selection=rerun.selection,
    )
    assert resumed.started_at == pytest.approx(child.started_at)

    with pytest.raises(ConfigError, match="c1 already exists"):
        decide(store, cfg, Request(run_id="c1"))
    with pytest.raises(ConfigError, match="'nope' not found"):
        decide(store, cfg, Request(parent_run_id="nope"))


def test_a_run_created_between_the_decision_and_the_lock_is_not_opened_twice(
    tmp_path: Path, sim_env: Any
) -> None:
    cfg = load_config(write_config(tmp_path, sample_config_data()))
    store = Store(cfg.output.root)
    opening = decide(store, cfg, Request(run_id="r1"))
    store.write_run(_record(cfg, "r1", "running"))  # another process got there first

    async def go() -> None:
        async with Run.open(cfg, opening):
            raise AssertionError("opened a run that already exists")

    with pytest.raises(ConfigError, match="r1 already exists"):
        asyncio.run(go())
    assert store.read("SELECT count(*) FROM runs WHERE run_id = 'r1'").rows == [(1,)]

    # A resume decided while the run was interrupted, finished by someone meanwhile.
    store.write_run(_record(cfg, "r1", "interrupted"))
    resume = decide(store, cfg, Request(resume="r1"))
    store.write_run(_record(cfg, "r1", "succeeded", updated_at=time.time() + 1))
    with pytest.raises(ConfigError, match="already finished"):
        resume.confirm(store)


def test_a_rerun_filter_that_matches_nothing_names_what_the_run_has(tmp_path: Path) -> None:
    """A typo in ``--reason`` used to make an empty child run."""
    cfg = load_config(write_config(tmp_path, sample_config_data()))
    store = Store(cfg.output.root)
    store.write_run(_record(cfg, "p1", "completed_with_failures", family_id="p1"))
    store.write_results("p1", [result(0, "p1", status="failed"), result(1, "p1"), result(2, "p1")])
    with pytest.raises(ConfigError) as bad:
        decide(store, cfg, Request(parent_run_id="p1", reasons=("no_rout",)))
    assert str(bad.value) == (
        "--reason 'no_rout': no failed/skipped chunk of run p1 has that reason; "
        "its reasons: no_route (1)"
    )
    with pytest.raises(ConfigError, match=r"--provider 'mistrl': run p1 sent no chunk"):
        decide(store, cfg, Request(parent_run_id="p1", providers=("mistrl",)))
    with pytest.raises(ConfigError) as nothing:
        decide(store, cfg, Request(parent_run_id="p1", statuses=("skipped",)))
    assert "nothing to rerun: no chunk of run p1 matches (it has succeeded (2), failed (1))" in (
        str(nothing.value)
    )
    assert not (tmp_path / "out" / "runs" / "p2").exists()
    assert decide(store, cfg, Request(parent_run_id="p1")).kind == "rerun"
