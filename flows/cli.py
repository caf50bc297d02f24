"""The ``docroute`` command.

    docroute run      --config docroute.yaml [--budget USD] [--simulate] [--full] [--since RUN_ID]
    docroute run      --resume RUN_ID         # continue an interrupted run
    docroute run      --dry-run               # the plan below, instead of running
    docroute plan     --config docroute.yaml [--budget USD] [--format table|json] [--full]
    docroute rerun    RUN_ID [--status failed] [--reason R] [--provider P] [--budget USD]
                      [--set task.max_output_tokens=2048] [--force]
    docroute runs     [--format table|csv|json]
    docroute sql      "SELECT provider, sum(cost_usd) FROM ledger GROUP BY 1"
    docroute audit    RUN_ID                  # check a run's promises from its data
    docroute compact  [RUN_ID]                # merge small Parquet parts
    docroute recover                          # record what killed runs journaled
    docroute serve    [--cron "0 2 * * *"]
    docroute simulate

Commands that read (``runs``, ``sql``, ``audit``) never write to the root; the
commands themselves are in ``flows.commands``.

Exit codes: 0 the run finished (failed chunks are data, listed in the summary);
1 the run itself failed; 2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from flows.commands import (
    Interrupted,
    cmd_audit,
    cmd_compact,
    cmd_plan,
    cmd_recover,
    cmd_rerun,
    cmd_run,
    cmd_runs,
    cmd_serve,
    cmd_simulate,
    cmd_sql,
)
from pipeline.errors import ConfigError, DocrouteError


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
        _recover_command,
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
    _reuse_args(run)
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
    _reuse_args(plan)
    plan.set_defaults(func=cmd_plan)


def _reuse_args(parser: argparse.ArgumentParser) -> None:
    """``--full`` and ``--since``: which earlier answers a run (or its plan) reuses."""
    parser.add_argument(
        "--full",
        action="store_true",
        help="fresh answers for every chunk: reuse none from earlier runs on the root "
        "(reuse.across_runs: false for this run)",
    )
    parser.add_argument(
        "--since",
        metavar="RUN_ID",
        help="reuse only answers made since run RUN_ID started (reuse.since for this run); "
        "older ones are asked for again",
    )


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


def _recover_command(sub: _Commands) -> None:
    recover = sub.add_parser(
        "recover",
        help="record what killed runs journaled (ledger, results) and mark them interrupted",
    )
    _where_args(recover)
    recover.set_defaults(func=cmd_recover)


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


if __name__ == "__main__":
    sys.exit(main())
