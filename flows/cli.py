"""The ``docroute`` command.

    docroute run      --config docroute.yaml [--budget USD] [--simulate]
    docroute rerun    RUN_ID [--status failed] [--budget USD]
    docroute runs     [--format table|csv|json]
    docroute sql      "SELECT provider, sum(cost_usd) FROM ledger GROUP BY 1"
    docroute serve    [--cron "0 2 * * *"]
    docroute simulate

Exit codes: 0 the run finished (failed chunks are data, listed in the summary);
1 the run itself failed; 2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

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

    run = sub.add_parser("run", help="run the nightly batch once, now")
    _config_arg(run)
    run.add_argument("--budget", type=_usd, help="override budget.run_usd for this run")
    run.add_argument("--run-id", help="use this run id (default: time-based)")
    run.add_argument("--simulate", action="store_true", help="use the simulator for every provider")
    run.set_defaults(func=cmd_run)

    rerun = sub.add_parser("rerun", help="process a run's failed/skipped chunks as a child run")
    rerun.add_argument("run_id", metavar="RUN_ID")
    _config_arg(rerun)
    rerun.add_argument("--budget", type=_usd, help="budget of the child run (USD)")
    rerun.add_argument(
        "--status",
        action="append",
        choices=["failed", "skipped"],
        help="which results to rerun (repeatable; default: both)",
    )
    rerun.add_argument(
        "--simulate", action="store_true", help="use the simulator for every provider"
    )
    rerun.set_defaults(func=cmd_rerun)

    runs = sub.add_parser("runs", help="list runs with status, counts and spend")
    _where_args(runs)
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=cmd_runs)

    sql = sub.add_parser("sql", help="query runs, documents, chunks, results, ledger (read-only)")
    sql.add_argument("query", metavar="QUERY")
    _where_args(sql)
    sql.set_defaults(func=cmd_sql)

    serve = sub.add_parser("serve", help="run the nightly schedule on this machine")
    _config_arg(serve)
    serve.add_argument("--cron", default="0 2 * * *", help='schedule (default "0 2 * * *")')
    serve.add_argument("--timezone", default="UTC")
    serve.add_argument("--name", default="nightly", help="deployment name")
    serve.add_argument("--port", type=int, default=4200, help="port of the local Prefect server")
    serve.set_defaults(func=cmd_serve)

    sim = sub.add_parser("simulate", help="serve the provider simulator in the foreground")
    _config_arg(sim)
    sim.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")
    sim.set_defaults(func=cmd_simulate)
    return p


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
        "--root", type=Path, help="output root (default: the config's, else ./docroute-output)"
    )
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")


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


def _root(args: argparse.Namespace) -> Path:
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
    load_config(path)  # a bad file stops here, before Prefect starts
    run_id = args.run_id or new_run_id()
    print(f"docroute run {run_id} · config {path}", flush=True)
    summary = asyncio.run(
        nightly_batch(
            config_path=str(path.resolve()),
            run_id=run_id,
            budget_usd=args.budget,
            simulate=args.simulate,
        )
    )
    print(format_summary(summary, path))
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    from flows.nightly import rerun_failed

    path = _config_path(args.config)
    require_run(Store(load_config(path).output.root), args.run_id)
    run_id = new_run_id()
    print(f"docroute rerun {run_id} · parent {args.run_id} · config {path}", flush=True)
    summary = asyncio.run(
        rerun_failed(
            parent_run_id=args.run_id,
            config_path=str(path.resolve()),
            run_id=run_id,
            budget_usd=args.budget,
            statuses=args.status,
            simulate=args.simulate,
        )
    )
    print(format_summary(summary, path))
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

    root = _root(args)
    if not (root / "catalog.duckdb").exists():
        raise ConfigError(
            f"no docroute data under {root} (run `docroute run` first, or pass --root)"
        )
    store = Store(root)
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
    for i, (reason, n) in enumerate(s["not_succeeded_by_reason"].items()):
        lines.append(f"  {'not done' if i == 0 else '':<10} {n} × {reason}")
    lines += [
        f"  data       {s['output_root']}",
        '  query      docroute sql "SELECT provider, sum(cost_usd) FROM ledger GROUP BY 1"'
        + (
            ""
            if Path(s["output_root"]).resolve() == DEFAULT_ROOT.resolve()
            else f" --root {s['output_root']}"
        ),
    ]
    if s["failed"] or s["skipped"]:
        lines.append(f"  rerun      docroute rerun {s['run_id']} --config {config}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
