"""The ``docroute`` command.

    docroute run      --config docroute.yaml [--budget USD] [--simulate]
    docroute run      --resume RUN_ID         # continue an interrupted run
    docroute run      --dry-run               # the plan below, instead of running
    docroute plan     --config docroute.yaml [--budget USD] [--format table|json]
    docroute rerun    RUN_ID [--status failed] [--reason R] [--provider P] [--budget USD]
                      [--set task.max_output_tokens=2048] [--force]
    docroute runs     [--format table|csv|json]
    docroute sql      "SELECT provider, sum(cost_usd) FROM ledger GROUP BY 1"
    docroute audit    RUN_ID                  # check a run's promises from its data
    docroute compact  [RUN_ID]                # merge small Parquet parts
    docroute serve    [--cron "0 2 * * *"]
    docroute simulate

Exit codes: 0 the run finished (failed chunks are data, listed in the summary);
1 the run itself failed; 2 bad configuration or arguments.
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

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pipeline.config import load_config
from pipeline.errors import ConfigError, DocrouteError
from pipeline.run import new_run_id, require_run
from pipeline.store import Store
from pipeline.store.journal import recover

DEFAULT_ROOT = Path("docroute-output")


def main(argv: list[str] | None = None) -> int:
    from pipeline.store import QueryError, StoreError

    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, QueryError) as exc:
        print(f"docroute: {exc}", file=sys.stderr)
        return 2
    except (DocrouteError, StoreError) as exc:
        print(f"docroute: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"docroute: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("docroute: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="docroute",
        description="Nightly LLM batch processing of document corpora: route by residency and "
        "budget, validate, ledger.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _run_command,
        _plan_command,
        _rerun_command,
        _audit_command,
        _compact_command,
        _runs_command,
        _sql_command,
        _serve_command,
        _simulate_command,
    ):
        add(sub)
    return p


_Commands = argparse._SubParsersAction  # what each command adds itself to


def _run_command(sub: _Commands) -> None:
    run = sub.add_parser("run", help="run the nightly batch once, now")
    _config_arg(run)
    run.add_argument("--budget", type=_usd, help="override budget.run_usd for this run")
    run.add_argument("--run-id", help="use this run id (default: time-based)")
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue the interrupted run RUN_ID: committed chunks are skipped and the "
        "money it spent counts against its budget",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue even though the schema, prompt or models changed",
    )
    run.add_argument("--simulate", action="store_true", help="use the simulator for every provider")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (as `docroute plan`) instead: no call, no run record",
    )
    run.set_defaults(func=cmd_run)


def _plan_command(sub: _Commands) -> None:
    plan = sub.add_parser(
        "plan", help="chunks, tokens and cost per endpoint, before any call (nothing is written)"
    )
    _config_arg(plan)
    plan.add_argument("--budget", type=_usd, help="check against this budget instead (USD)")
    plan.add_argument("--format", choices=["table", "json"], default="table")
    plan.set_defaults(func=cmd_plan)


def _rerun_command(sub: _Commands) -> None:
    rerun = sub.add_parser("rerun", help="process a run's failed/skipped chunks as a child run")
    rerun.add_argument("run_id", metavar="RUN_ID")
    _config_arg(rerun)
    rerun.add_argument("--budget", type=_usd, help="budget of the child run (USD)")
    rerun.add_argument(
        "--status",
        action="append",
        choices=["failed", "skipped", "succeeded"],
        help="which results to rerun (repeatable; default: failed and skipped)",
    )
    rerun.add_argument(
        "--reason",
        action="append",
        help="only results with this reason, e.g. budget_exhausted, no_route (repeatable)",
    )
    rerun.add_argument(
        "--provider",
        action="append",
        help="only chunks that had an attempt at this provider (repeatable)",
    )
    rerun.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value for the child run, e.g. task.max_output_tokens=2048 "
        "(VALUE is YAML; repeatable)",
    )
    rerun.add_argument(
        "--force",
        action="store_true",
        help="allow a schema or prompt change although the family has succeeded answers",
    )
    rerun.add_argument(
        "--simulate", action="store_true", help="use the simulator for every provider"
    )
    rerun.set_defaults(func=cmd_rerun)


def _audit_command(sub: _Commands) -> None:
    audit = sub.add_parser("audit", help="check a run's promises from the stored data alone")
    audit.add_argument("run_id", metavar="RUN_ID")
    _where_args(audit)
    audit.set_defaults(func=cmd_audit)


def _compact_command(sub: _Commands) -> None:
    compact = sub.add_parser("compact", help="merge a run's (or every run's) small Parquet parts")
    compact.add_argument("run_id", metavar="RUN_ID", nargs="?")
    _where_args(compact)
    compact.set_defaults(func=cmd_compact)


def _runs_command(sub: _Commands) -> None:
    runs = sub.add_parser("runs", help="list runs with status, counts and spend")
    _where_args(runs)
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=cmd_runs)


def _sql_command(sub: _Commands) -> None:
    sql = sub.add_parser("sql", help="query runs, documents, chunks, results, ledger (read-only)")
    sql.add_argument("query", metavar="QUERY")
    _where_args(sql)
    sql.set_defaults(func=cmd_sql)


def _serve_command(sub: _Commands) -> None:
    serve = sub.add_parser("serve", help="run the nightly schedule on this machine")
    _config_arg(serve)
    serve.add_argument("--cron", default="0 2 * * *", help='schedule (default "0 2 * * *")')
    serve.add_argument("--timezone", default="UTC")
    serve.add_argument("--name", default="nightly", help="deployment name")
    serve.add_argument("--port", type=int, default=4200, help="port of the local Prefect server")
    serve.set_defaults(func=cmd_serve)


def _simulate_command(sub: _Commands) -> None:
    sim = sub.add_parser("simulate", help="serve the provider simulator in the foreground")
    _config_arg(sim)
    sim.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")
    sim.set_defaults(func=cmd_simulate)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="docroute.yaml (default: $DOCROUTE_CONFIG, else ./docroute.yaml)",
    )


def _where_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument(
        "--root",
        type=_root_arg,
        help="output root, a folder or a URI like s3://bucket/prefix "
        "(default: the config's, else ./docroute-output)",
    )
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")


def _root_arg(text: str) -> Path | str:
    """A folder, or an object-store URI kept as given (``Path`` would fold its ``//``)."""
    from pipeline.store.fs import is_uri

    return text if is_uri(text) else Path(text)


def _usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an amount in USD like 2.50, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"budget must be positive, got {text}")
    return value


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
    if (
        args.config is not None
        or os.environ.get("DOCROUTE_CONFIG")
        or Path("docroute.yaml").exists()
    ):
        return load_config(_config_path(args.config)).output.root
    return DEFAULT_ROOT


def cmd_run(args: argparse.Namespace) -> int:
    from flows.nightly import nightly_batch

    path = _config_path(args.config)
    cfg = load_config(path)  # a bad file stops here, before Prefect starts
    if args.dry_run:
        return _plan(path, args.budget, "table")
    if args.resume is not None and not args.resume.strip():
        raise ConfigError("--resume needs the RUN_ID of an interrupted run (see `docroute runs`)")
    if args.resume and args.run_id and args.resume != args.run_id:
        raise ConfigError("--resume RUN_ID already names the run; leave out --run-id")
    if args.force and not args.resume:
        raise ConfigError("--force only applies with --resume RUN_ID")
    store = Store(cfg.output.root)  # an unusable object-store root stops here, before any call
    if args.resume:
        from pipeline.family import resumable

        resumable(store, cfg, args.resume, force=args.force)  # refused here, before Prefect
    run_id = args.resume or args.run_id or new_run_id()
    _check_startable(cfg, store, run_id)
    verb = "resume" if args.resume else "run"
    print(f"docroute {verb} {run_id} · config {path}", flush=True)
    summary = _run_flow(
        lambda: nightly_batch(
            config_path=str(path.resolve()),
            run_id=run_id,
            budget_usd=args.budget,
            simulate=args.simulate,
            resume=bool(args.resume),
            force=args.force,
        ),
        run_id,
        path,
    )
    print(format_summary(summary, path))
    return 0


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
        with prefect_api():
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
    from pipeline.family import rerun_selection

    path = _config_path(args.config)
    overrides = _overrides(args.set)
    cfg = load_config(path, overrides=overrides)  # bad overrides stop here, before Prefect
    rerun_selection(  # a refused rerun stops here too
        Store(cfg.output.root),
        cfg,
        args.run_id,
        statuses=args.status,
        reasons=args.reason,
        providers=args.provider,
        force=args.force,
    )
    run_id = new_run_id()
    print(f"docroute rerun {run_id} · parent {args.run_id} · config {path}", flush=True)
    summary = _run_flow(
        lambda: rerun_failed(
            parent_run_id=args.run_id,
            config_path=str(path.resolve()),
            run_id=run_id,
            budget_usd=args.budget,
            statuses=args.status,
            simulate=args.simulate,
            reasons=args.reason,
            providers=args.provider,
            overrides=overrides,
            force=args.force,
        ),
        run_id,
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


def cmd_compact(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.run_id:
        require_run(store, args.run_id)
    written = store.compact(args.run_id)
    store.refresh_catalog()
    print(f"compacted: {written} merged part(s) written under {store.root}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    return _plan(_config_path(args.config), args.budget, args.format)


def _plan(path: Path, budget: float | None, fmt: Literal["table", "json"]) -> int:
    """Print what a run of ``path`` would cost; no provider is connected, nothing written."""
    from pipeline.plan import make_plan, render_plan

    _out(render_plan(make_plan(load_config(path), config_path=path, budget_usd=budget), fmt))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from pipeline.store import render

    store = _store(args)
    result = store.query(
        "SELECT run_id, parent_run_id AS parent, status, started_at, chunks, succeeded, failed, "
        "skipped, round(spend_usd, 6) AS spend_usd, budget_usd FROM runs "
        f"ORDER BY started_at DESC LIMIT {int(args.limit)}"
    )
    _out(render(result, args.format))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from pipeline.store import render

    _out(render(_store(args).query(args.query), args.format))
    return 0


def _out(text: str) -> None:
    """Print a rendered result exactly once-terminated (CSV already ends with a newline)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _store(args: argparse.Namespace) -> Any:
    from pipeline.store import Store

    store = Store(_root(args))
    if not store.has_data():
        raise ConfigError(
            f"no docroute data under {store.root} (run `docroute run` first, or pass --root)"
        )
    recover(store)  # a killed run's journaled costs become ledger rows before anyone reads
    store.refresh_catalog()
    return store


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


def format_summary(s: dict[str, Any], config: Path) -> str:
    """The end-of-run summary for a terminal."""
    lines = [
        "",
        f"run {s['run_id']}: {s['status']}"
        + (f" (rerun of {s['parent_run_id']})" if s.get("parent_run_id") else ""),
        f"  chunks     {s['chunks']}: {s['succeeded']} succeeded, {s['failed']} failed, "
        f"{s['skipped']} skipped",
        f"  documents  {s['documents']}"
        + (f" ({s['document_errors']} unreadable)" if s["document_errors"] else ""),
        f"  spend      ${s['spend_usd']:.4f} of ${s['budget_usd']:.2f} budget "
        f"({100 * s['spend_usd'] / s['budget_usd']:.1f}%)",
    ]
    for name, v in s["spend_by_provider"].items():
        lines.append(f"    {name:<18} ${v['cost_usd']:.6f}  ({v['attempts']} attempts)")
    if s.get("worst_case_attempts"):
        kinds = ", ".join(f"{n} {o}" for o, n in s["worst_case_attempts"].items())
        lines.append(
            f"    of which ${s['spend_worst_case_usd']:.6f} booked at the reserved worst case "
            f"({kinds}): the provider may have billed less"
        )
    for i, (reason, n) in enumerate(s["not_succeeded_by_reason"].items()):
        lines.append(f"  {'not done' if i == 0 else '':<10} {n} × {reason}")
    for i, d in enumerate(s.get("disabled", [])):
        # "mistral-eu rejected the key (Invalid API Key): 7 chunk(s) not sent, 1 failed"
        counts = [f"{d['not_sent']} chunk(s) not sent"] + (
            [f"{d['failed']} failed"] * bool(d["failed"])
        )
        lines.append(f"  {'disabled' if i == 0 else '':<10} {d['why']}: {', '.join(counts)}")
    lines += [
        f"  data       {s['output_root']}",
        '  query      docroute sql "SELECT provider, sum(cost_usd) FROM ledger GROUP BY 1"'
        + (
            ""
            if str(s["output_root"]) == str(DEFAULT_ROOT.resolve())
            else f" --root {s['output_root']}"
        ),
    ]
    lines += [f"  advice     {a}" for a in s.get("advice", [])]
    if s["failed"] or s["skipped"]:
        lines.append(f"  rerun      docroute rerun {s['run_id']} --config {config}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
