"""What each ``docroute`` command does (``flows.cli`` parses the arguments).

    cmd_run(args)      # decide the run (``pipeline.opening``), then the nightly flow
    cmd_rerun(args)    # decide the child run, then the rerun flow
    cmd_runs(args), cmd_sql(args), cmd_audit(args)   # read the root; never write to it
    cmd_recover(args), cmd_compact(args)             # write: recover journals, merge parts

Commands that read only read (no journal recovery, no catalog refresh, no record): a read
of a root with unrecovered journals says so and names ``docroute recover``. Commands that
write recover first.

Only the config and the store are imported at the top: the run machinery
(``pipeline.opening``, ``pipeline.run``) loads every provider SDK, and ``flows.nightly``
loads Prefect, so the commands that need them import them when they run; ``sql`` or
``runs`` never wait for them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from flows.summary import DEFAULT_ROOT, format_summary
from pipeline.config import Config, load_config
from pipeline.errors import ConfigError
from pipeline.store import Store
from pipeline.store.journal import recover


def _config_path(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("DOCROUTE_CONFIG")
    path = Path(env) if env else Path("docroute.yaml")
    if not path.exists():
        raise ConfigError(
            f"no config at {path}: pass --config FILE (see examples/docroute.yaml) "
            "or set DOCROUTE_CONFIG"
        )
    return path


def _root(args: argparse.Namespace) -> Path | str:
    if args.root is not None:
        return args.root
    if _has_config(args):
        return _config(args).output.root
    return DEFAULT_ROOT


def _has_config(args: argparse.Namespace) -> bool:
    """Whether a read command has a config to take defaults from (it needs none)."""
    return bool(
        args.config is not None
        or os.environ.get("DOCROUTE_CONFIG")
        or Path("docroute.yaml").exists()
    )


def _config(args: argparse.Namespace) -> Config:
    return load_config(_config_path(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    cfg = load_config(path, overrides=_reuse(args))  # a bad file stops here
    if args.format is not None and not args.dry_run:
        raise ConfigError("--format only applies with --dry-run (it formats the plan)")
    if args.dry_run:
        return _plan(path, args.budget, args.format or "table", _reuse(args))
    if args.resume is not None and not args.resume.strip():
        raise ConfigError("--resume needs the RUN_ID of an interrupted run (see `docroute runs`)")
    if args.resume and args.run_id and args.resume != args.run_id:
        raise ConfigError("--resume RUN_ID already names the run; leave out --run-id")
    if args.force and not args.resume:
        raise ConfigError("--force only applies with --resume RUN_ID")
    from flows.nightly import nightly_batch
    from pipeline.opening import Request, decide

    store = Store(cfg.output.root)  # an unusable object-store root stops here, before any call
    request = Request(run_id=args.run_id, resume=args.resume or None, force=args.force)
    opening = decide(store, cfg, request)  # a refused resume stops here, before Prefect
    _check_startable(cfg, store, opening.run_id)
    verb = "resume" if opening.resumed else "run"
    print(f"docroute {verb} {opening.run_id} · config {path}", flush=True)
    summary = _run_flow(
        lambda: nightly_batch(
            config_path=str(path.resolve()),
            budget_usd=args.budget,
            simulate=args.simulate,
            full=args.full,
            opening=opening,
        ),
        opening.run_id,
        path,
    )
    print(format_summary(summary, path))
    return 0


def _reuse(args: argparse.Namespace) -> dict[str, object]:
    """``--full``: this run reuses no earlier run's answers; ``--since RUN_ID``: only
    answers made since that run started."""
    overrides: dict[str, object] = {"reuse.across_runs": False} if args.full else {}
    if args.since:
        overrides["reuse.since"] = args.since
    return overrides


class Interrupted(Exception):
    """The user stopped a run (Ctrl-C); its record says ``interrupted``."""


def _run_flow(flow: Callable[[], Awaitable[Any]], run_id: str, config: Path) -> Any:
    """Run ``flow()`` against a Prefect API docroute controls (see ``flows.prefect_api``).

    The first Ctrl-C cancels the run: calls in flight get their ledger rows, the run is
    recorded ``interrupted`` and :class:`Interrupted` names the command that continues it.
    A second Ctrl-C ends the process at once; what it leaves is what ``kill -9`` leaves,
    which ``--resume`` recovers.
    """
    from flows.prefect_api import prefect_api
    from flows.terminal import progress_bar

    resume = f"docroute run --config {config} --resume {run_id}"
    main: asyncio.Task[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stopping = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping or main is None or loop is None or main.done():
            os.write(2, f"\ndocroute: stopped at once; continue with `{resume}`\n".encode())
            os._exit(130)
        stopping = True
        os.write(2, b"\ndocroute: stopping (Ctrl-C again to quit at once) ...\n")
        loop.call_soon_threadsafe(main.cancel)

    async def top() -> Any:
        nonlocal main, loop
        main, loop = asyncio.current_task(), asyncio.get_running_loop()
        return await flow()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with prefect_api(), progress_bar(sys.stderr.isatty()):
            try:
                return asyncio.run(top())
            except asyncio.CancelledError:
                if not stopping:
                    raise
                raise Interrupted(f"run {run_id} interrupted; continue with `{resume}`") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_startable(cfg: Any, store: Store, run_id: str) -> None:
    """What a run would find out only after Prefect started, said before it does."""
    from pipeline.store.journal import RunLock

    corpus = cfg.corpus.path
    if not corpus.is_dir():
        what = "is not a folder" if corpus.exists() else "does not exist"
        raise ConfigError(f"corpus.path: {corpus} {what} (expected the folder of documents)")
    if RunLock.held(store.state_dir, run_id):
        raise ConfigError(
            f"run {run_id} is still running in another process; wait for it to end, then "
            f"`docroute run --resume {run_id}` if it did not finish"
        )


def cmd_rerun(args: argparse.Namespace) -> int:
    from flows.nightly import rerun_failed
    from pipeline.opening import Request, decide

    path = _config_path(args.config)
    overrides = _overrides(args.set)
    cfg = load_config(path, overrides=overrides)  # bad overrides stop here, before Prefect
    request = Request(
        parent_run_id=args.run_id,
        statuses=tuple(args.status or ()),
        reasons=tuple(args.reason or ()),
        providers=tuple(args.provider or ()),
        force=args.force,
    )
    opening = decide(Store(cfg.output.root), cfg, request)  # a refused rerun stops here too
    print(f"docroute rerun {opening.run_id} · parent {args.run_id} · config {path}", flush=True)
    summary = _run_flow(
        lambda: rerun_failed(
            parent_run_id=args.run_id,
            config_path=str(path.resolve()),
            budget_usd=args.budget,
            simulate=args.simulate,
            overrides=overrides,
            opening=opening,
        ),
        opening.run_id,
        path,
    )
    print(format_summary(summary, path))
    return 0


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``["task.max_output_tokens=2048"]`` → ``{"task.max_output_tokens": 2048}`` (YAML values)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set expects KEY=VALUE like task.max_output_tokens=2048, got {pair!r}"
            )
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: the value is not valid YAML ({exc})") from None
    return out


def cmd_audit(args: argparse.Namespace) -> int:
    from pipeline.audit import audit

    report = audit(_store(args), args.run_id)
    if args.format == "json":
        import json

        _out(json.dumps(report.to_dict(), indent=2))
    else:
        _out(report.text())
    return 0 if report.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import ReportError, limits_from_config, write_report

    limits = limits_from_config(_config(args)) if _has_config(args) else {}
    out = args.out or Path(f"report-{args.run_id}.html")
    try:
        path = write_report(_store(args), args.run_id, out, limits=limits)
    except ReportError as exc:
        raise ConfigError(str(exc)) from None
    print(f"report: {path.resolve()} (one file; opens offline)")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from pipeline.run import require_run

    store = _store(args, write=True)
    if args.run_id:
        require_run(store, args.run_id)
    written = store.compact(args.run_id)
    store.refresh_catalog()
    print(f"compacted: {written} merged part(s) written under {store.root}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from pipeline.store.journal import unrecovered

    store = _existing(args)
    stopped = unrecovered(store).stopped
    entries = recover(store)
    store.refresh_catalog()
    marked = f"; run {', '.join(stopped)} marked interrupted" if stopped else ""
    print(f"recovered: {entries} ledger entr{'y' if entries == 1 else 'ies'} from journals{marked}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    return _plan(_config_path(args.config), args.budget, args.format, _reuse(args))


def _plan(
    path: Path,
    budget: float | None,
    fmt: Literal["table", "json"],
    overrides: dict[str, object],
) -> int:
    """Print what a run of ``path`` would cost; no provider is connected, nothing written."""
    from pipeline.plan import make_plan, render_plan

    cfg = load_config(path, overrides=overrides)
    _out(render_plan(make_plan(cfg, config_path=path, budget_usd=budget), fmt))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from pipeline.store import QueryResult, render
    from pipeline.store.journal import unrecovered

    store = _store(args)
    result = store.query(
        "SELECT run_id, parent_run_id AS parent, status, started_at, chunks, succeeded, failed, "
        "skipped, round(spend_usd, 6) AS spend_usd, budget_usd FROM runs "
        f"ORDER BY started_at DESC LIMIT {int(args.limit)}"
    )
    stopped = set(unrecovered(store).stopped)  # recorded running, process gone
    rows = [(r[0], r[1], "interrupted" if r[0] in stopped else r[2], *r[3:]) for r in result.rows]
    _out(render(QueryResult(result.columns, rows), args.format))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from pipeline.store import render

    _out(render(_store(args).query(args.query), args.format))
    return 0


def _out(text: str) -> None:
    """Print a rendered result exactly once-terminated (CSV already ends with a newline)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _existing(args: argparse.Namespace) -> Store:
    store = Store(_root(args))
    if not store.has_data():
        raise ConfigError(
            f"no docroute data under {store.root} (run `docroute run` first, or pass --root)"
        )
    return store


def _store(args: argparse.Namespace, *, write: bool = False) -> Store:
    """The root the command names. Commands that read only read: a root with journals
    of dead runs not yet recovered is said so on stderr. Commands that write (``write``)
    recover them first and refresh the catalog."""
    from pipeline.store.journal import unrecovered

    store = _existing(args)
    if write:
        recover(store)  # a killed run's journaled costs become ledger rows first
        store.refresh_catalog()
        return store
    pending = unrecovered(store)
    if pending:
        print(f"docroute: note: {pending.notice(store.root)}", file=sys.stderr)
    for note in _outstanding_jobs(store, set(pending.stopped)):
        print(f"docroute: note: {note}", file=sys.stderr)
    return store


def _outstanding_jobs(store: Store, stopped: set[str]) -> list[str]:
    """Batch jobs that runs no longer alive left at their providers, and how to read them."""
    from pipeline.store.intents import Intents

    left = Intents(store.state_dir).by_run()
    if not left:
        return []
    running = {r for (r,) in store.read("SELECT run_id FROM runs WHERE status = 'running'").rows}
    notes = []
    for run_id, intents in left.items():
        if run_id in running and run_id not in stopped:
            continue  # alive: it reads them itself
        requests = sum(len(i.requests) for i in intents)
        held = sum(i.reserved_usd for i in intents)
        notes.append(
            f"run {run_id} left {len(intents)} batch job(s) of {requests} request(s) at the "
            f"provider (worst case ${held:.6f}); `docroute run --resume {run_id}` reads "
            "their answers, and sends none of them again"
        )
    return notes


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve

    path = _config_path(args.config)
    load_config(path)
    serve(path.resolve(), cron=args.cron, timezone=args.timezone, name=args.name, port=args.port)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from pipeline.endpoints import profile_of
    from pipeline.simulator import serve_forever

    cfg = load_config(_config_path(args.config))
    profiles = {p.name: profile_of(p) for p in cfg.providers}

    def ready(urls: dict[str, str]) -> None:
        print("simulated endpoints (Ctrl-C stops):")
        for name, url in urls.items():
            print(f"  {name:<20} {url}")
        sys.stdout.flush()

    serve_forever(profiles, port=args.port, on_ready=ready)
    return 0
