"""What a command opens, decided once: a new run, a resumed one, or a rerun of a parent.

    opening = decide(store, cfg, Request(resume="20261121-020000-3f9a1c"))
    opening.kind          # "resume"; or "new", "rerun"
    opening.selection     # a rerun's chunk selection (kept when a rerun is resumed)
    async with Run.open(cfg, opening) as run: ...

``decide`` is the one place a run's kind is decided. ``docroute run`` and ``docroute
rerun`` call it before Prefect starts (a refused resume or rerun costs nothing) and pass
the ``Opening`` into the flow; a flow run that was given none (a scheduled deployment, a
Prefect retry) calls it itself, once. ``Run.open`` only confirms, under the run's lock,
that the root still agrees (``Opening.confirm``: nobody created or finished the run in
between), and loads a resumed run's prior rows after recovering its journal.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.family import ReuseScope, Selection, Versions
from pipeline.store import RunRecord, Store
from schemas import get_schema

log = logging.getLogger(__name__)

Kind = Literal["new", "resume", "rerun"]

#: The flow each kind of run is recorded under (a resumed run keeps its first flow's).
NIGHTLY, RERUN = "nightly_batch", "rerun_failed"


@dataclass(frozen=True, slots=True)
class Request:
    """A command's arguments, as far as they say which run to open.

    ``resume`` names an interrupted run to continue; ``parent_run_id`` asks for a rerun of
    that run's ``statuses``/``reasons``/``providers``; neither, a new run (``run_id`` or a
    fresh time-based id).
    """

    run_id: str | None = None
    resume: str | None = None
    force: bool = False
    parent_run_id: str | None = None
    statuses: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Opening:
    """The run a command opens (passed from the CLI into the flow, so plain data)."""

    run_id: str
    kind: Kind
    family_id: str
    flow: str = NIGHTLY
    parent_run_id: str | None = None
    selection: Selection | None = None
    started_at: float | None = None  # a resumed run keeps its first start
    force: bool = False
    reuse: ReuseScope | None = None  # None: from the config (``ReuseScope.of``)

    @classmethod
    def new(cls, run_id: str, *, flow: str = NIGHTLY) -> Opening:
        """A run from scratch (its own family)."""
        return cls(run_id=run_id, kind="new", family_id=run_id, flow=flow)

    @property
    def resumed(self) -> bool:
        return self.kind == "resume"

    def confirm(self, store: Store) -> None:
        """Under the run's lock: raise ``ConfigError`` if the root no longer agrees with the
        decision (another process created the run, or finished the one to resume)."""
        record = store.latest_run(self.run_id)
        if not self.resumed:
            if record is not None:
                raise ConfigError(
                    f"run {self.run_id} already exists under {store.root}; resume it with "
                    f"`docroute run --resume {self.run_id}` or choose another run id"
                )
            return
        if record is None:
            raise ConfigError(
                f"run {self.run_id!r} not found under {store.root}; nothing to resume"
            )
        _check_finished(record)


def decide(store: Store, cfg: Config, request: Request) -> Opening:
    """The run ``request`` opens under ``cfg``, or a ``ConfigError`` saying why it may not.

    A resume is refused for an unknown or finished run, or one whose schema, prompt or
    model policy this config changes (unless ``force``); a rerun for an unknown parent, or
    one that would mix two versions' answers in the family (unless ``force``); a new run
    whose id exists already.
    """
    if request.resume is not None:
        record = resumable(store, cfg, request.resume, force=request.force)
        log.info("resuming run %s (%s)", record.run_id, record.status)
        selection = Selection.from_json(record.selection) if record.selection else None
        return Opening(
            run_id=record.run_id,
            kind="resume",
            family_id=record.family_id or record.run_id,
            flow=RERUN if selection else NIGHTLY,
            parent_run_id=record.parent_run_id,
            selection=selection,
            started_at=record.started_at,
            force=request.force,
            # a resumed run reuses what it started with (``--full`` stays ``--full``)
            reuse=ReuseScope.from_json(record.reuse) if record.reuse else None,
        )
    run_id = request.run_id or new_run_id()
    reuse = ReuseScope.of(cfg, store)  # an unknown ``reuse.since`` run stops here
    fresh = Opening(run_id=run_id, kind="new", family_id=run_id, force=request.force, reuse=reuse)
    fresh.confirm(store)  # an id that exists already is refused
    if request.parent_run_id is None:
        return fresh
    parent = _parent(store, request.parent_run_id)
    selection = rerun_selection(
        store,
        cfg,
        parent.run_id,
        statuses=request.statuses,
        reasons=request.reasons,
        providers=request.providers,
        force=request.force,
    )
    return Opening(
        run_id=run_id,
        kind="rerun",
        family_id=parent.family_id or parent.run_id,
        flow=RERUN,
        parent_run_id=parent.run_id,
        selection=selection,
        force=request.force,
        reuse=reuse,
    )


def new_run_id() -> str:
    """Sortable by start time, unique: ``20261121-020000-3f9a1c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _parent(store: Store, run_id: str) -> RunRecord:
    parent = store.latest_run(run_id)
    if parent is None:
        raise ConfigError(f"run {run_id!r} not found under {store.root} (see `docroute runs`)")
    return parent


def resumable(store: Store, cfg: Config, run_id: str, *, force: bool) -> RunRecord:
    """The record of ``run_id`` if ``cfg`` may resume it; else a ``ConfigError`` saying why."""
    record = store.latest_run(run_id)
    if record is None:
        raise ConfigError(f"run {run_id!r} not found under {store.root}; nothing to resume")
    check_resume(record, Versions.of(cfg, get_schema(cfg.task.schema_name)), force=force)
    return record


def rerun_selection(
    store: Store,
    cfg: Config,
    parent_run_id: str,
    *,
    statuses: Sequence[str] | None = None,
    reasons: Sequence[str] | None = None,
    providers: Sequence[str] | None = None,
    force: bool = False,
) -> Selection:
    """What a rerun of ``parent_run_id`` under ``cfg`` takes (default: failed and skipped
    chunks); a ``ConfigError`` if the parent is unknown or the rerun would mix versions."""
    parent = _parent(store, parent_run_id)
    selection = Selection(
        parent_run_id=parent_run_id,
        statuses=tuple(statuses or ("failed", "skipped")),
        reasons=tuple(reasons or ()),
        providers=tuple(providers or ()),
    )
    check_selection(store, selection)
    versions = Versions.of(cfg, get_schema(cfg.task.schema_name))
    check_rerun(store, parent, versions, force=force)
    return selection


def check_selection(store: Store, selection: Selection) -> None:
    """Refuse a rerun whose filters name a reason or provider the parent run does not have
    (a typo would otherwise make an empty child run), or that selects no chunk at all;
    the message lists what the parent has, with counts."""
    parent, statuses = selection.parent_run_id, selection.statuses
    rows = store.read(
        "SELECT status, reason, count(*) FROM results WHERE run_id = ? "
        "GROUP BY ALL ORDER BY 3 DESC",
        [parent],
    ).rows
    reasons: dict[str, int] = {}
    for status, reason, n in rows:
        if status in statuses and reason is not None:
            reasons[reason] = reasons.get(reason, 0) + n
    what = "/".join(statuses)
    for reason in selection.reasons:
        if reason not in reasons:
            raise ConfigError(
                f"--reason {reason!r}: no {what} chunk of run {parent} has that reason; "
                f"its reasons: {_counts(reasons)}"
            )
    if selection.providers:
        tried = dict(
            store.read(
                "SELECT provider, count(DISTINCT chunk_id) FROM ledger WHERE run_id = ? "
                "AND provider IS NOT NULL GROUP BY 1 ORDER BY 2 DESC",
                [parent],
            ).rows
        )
        for provider in selection.providers:
            if provider not in tried:
                raise ConfigError(
                    f"--provider {provider!r}: run {parent} sent no chunk to it; "
                    f"its providers (chunks sent): {_counts(tried)}"
                )
    where, params = selection.sql()
    chosen = store.read(
        f"SELECT count(*) FROM results r WHERE r.run_id = ? AND {where}", [parent, *params]
    ).rows[0][0]
    if not chosen:
        by_status: dict[str, int] = {}
        for status, _, n in rows:
            by_status[status] = by_status.get(status, 0) + n
        raise ConfigError(
            f"nothing to rerun: no chunk of run {parent} matches (it has "
            f"{_counts(by_status)}); --status succeeded re-asks succeeded chunks"
        )


def _counts(tally: dict[str, int]) -> str:
    """``no_route (2), timeout (1)``, or ``none``."""
    return ", ".join(f"{k} ({n})" for k, n in tally.items()) or "none"


def check_rerun(store: Store, parent: RunRecord, versions: Versions, *, force: bool) -> None:
    """Refuse a rerun that would mix answers of two schemas or prompts, unless forced.

    Mixing happens when the family already holds succeeded answers under the parent's
    versions and this rerun would add answers under different ones.
    """
    changes = versions.differences(parent)
    if not changes or force:
        return
    family = parent.family_id or parent.run_id
    succeeded = store.read(
        "SELECT count(*) FROM results r JOIN runs u USING (run_id) "
        "WHERE coalesce(u.family_id, u.run_id) = ? AND r.status = 'succeeded'",
        [family],
    ).rows[0][0]
    if succeeded:
        raise ConfigError(
            f"rerun of {parent.run_id} refused: this config changes {'; '.join(changes)}, "
            f"and the run family already has {succeeded} succeeded answer(s) under the old "
            "version, so its results would mix two kinds of answer. Start a new run "
            "(`docroute run`), or pass --force to mix them knowingly."
        )


def check_resume(record: RunRecord, versions: Versions, *, force: bool) -> None:
    """Refuse to resume a finished run, or one whose schema/prompt/model policy changed."""
    _check_finished(record)
    changes = versions.differences(record)
    if record.model_policy is not None and record.model_policy != versions.model_policy:
        changes.append(f"model policy {record.model_policy} → {versions.model_policy}")
    if changes and not force:
        raise ConfigError(
            f"run {record.run_id} cannot be resumed with this config: it changes "
            f"{'; '.join(changes)}. Resume with the config the run started with, or pass "
            "--force."
        )


def _check_finished(record: RunRecord) -> None:
    if record.status in ("succeeded", "completed_with_failures"):
        raise ConfigError(
            f"run {record.run_id} already finished ({record.status}); nothing to resume. "
            f"Use `docroute rerun {record.run_id}` for its failed or skipped chunks."
        )


__all__ = [
    "Kind",
    "Opening",
    "Request",
    "check_rerun",
    "check_resume",
    "decide",
    "new_run_id",
    "rerun_selection",
    "resumable",
]
