"""The ``docroute`` command.

    docroute run      --config docroute.yaml [--budget USD] [--simulate] [--full] [--since RUN_ID]
    docroute run      --resume RUN_ID         # continue an interrupted run
    docroute run      --dry-run [--format table|json]   # the plan below, instead of running
    docroute plan     --config docroute.yaml [--budget USD] [--format table|json] [--full]
    docroute rerun    RUN_ID [--status failed] [--reason R] [--provider P] [--budget USD]
                      [--set task.max_output_tokens=2048] [--force]
    docroute runs     [--format table|csv|json]
    docroute sql      "SELECT provider, sum(cost_usd) FROM ledger GROUP BY 1"
    docroute audit    RUN_ID                  # check a run's promises from its data
    docroute report   RUN_ID [--out FILE]     # the run's charts, one offline HTML file
    docroute compact  [RUN_ID]                # merge small Parquet parts
    docroute recover                          # record what killed runs journaled
    docroute serve    [--cron "0 2 * * *"]
    docroute simulate
    docroute --version

This module is only the parser, and imports nothing beyond the standard library, so
``--help``, ``COMMAND --help``, ``--version`` and argument errors answer at once. Command
``NAME`` runs ``flows.commands.cmd_NAME``, imported once the arguments parse; each command
imports the SDKs, Prefect and the stores it needs when it runs. Commands that read
(``runs``, ``sql``, ``audit``) never write to the root.

Exit codes: 0 the run finished (failed chunks are data, listed in the summary);
1 the run itself failed; 2 bad configuration or arguments; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

_EXIT_CODES = """\
exit codes: 0 the run finished (failed chunks are data, listed in the summary);
1 the run itself failed; 2 bad configuration or arguments; 130 interrupted.
Run `docroute COMMAND --help` for a command's options and examples."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("docroute: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; its failure becomes one line and an exit code.

    The imports are here, not at the top, because they load pydantic, DuckDB and (for
    ``run``) every provider SDK and Prefect: seconds that ``--help`` must not wait for.
    """
    from flows import commands
    from pipeline.errors import ConfigError, DocrouteError
    from pipeline.store import QueryError, StoreError

    try:
        return int(getattr(commands, f"cmd_{args.command}")(args) or 0)
    except (ConfigError, QueryError) as exc:
        print(f"docroute: {exc}", file=sys.stderr)
        return 2
    except (DocrouteError, StoreError) as exc:
        print(f"docroute: {exc}", file=sys.stderr)
        return 1
    except commands.Interrupted as exc:
        print(f"docroute: {exc}", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="docroute",
        description="Nightly LLM batch processing of document corpora: route by residency and "
        "budget, validate, ledger.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _run_command,
        _plan_command,
        _rerun_command,
        _audit_command,
        _report_command,
        _compact_command,
        _recover_command,
        _runs_command,
        _sql_command,
        _serve_command,
        _simulate_command,
    ):
        add(sub)
    return p


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked for
    (reading the installed packages' metadata costs every other command time)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            nargs=0,
            help="print the installed docroute version and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("docroute")
        except PackageNotFoundError:
            installed = "unknown (not installed: `pip install -e .` in the repository)"
        print(f"docroute {installed}")
        parser.exit(0)


_Commands = argparse._SubParsersAction  # what each command adds itself to


def _command(
    sub: _Commands, name: str, summary: str, examples: list[str], details: str = ""
) -> argparse.ArgumentParser:
    """Subcommand ``name``: ``summary`` in the command list, ``examples`` under its help."""
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}." + (f"\n\n{details}" if details else ""),
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _run_command(sub: _Commands) -> None:
    run = _command(
        sub,
        "run",
        "run the nightly batch once, now",
        [
            "docroute run --config docroute.yaml --budget 5",
            "docroute run --simulate                    # every provider simulated, no key needed",
            "docroute run --dry-run --format json       # the plan, as `docroute plan` prints it",
            "docroute run --resume 20260101-020000-abcdef",
        ],
        "Prints one summary at the end; failed chunks are data (see `docroute rerun`).",
    )
    _config_arg(run)
    _budget_arg(run, "budget cap of this run in USD (default: the config's budget.run_usd)")
    run.add_argument(
        "--run-id", help="use this run id (default: time-based, like 20260101-020000-abcdef)"
    )
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue the interrupted run RUN_ID: committed chunks are skipped and the "
        "money it spent counts against its budget (default: start a new run)",
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
    run.add_argument(
        "--format",
        choices=["table", "json"],
        help="with --dry-run: print the plan as a table or as JSON (default: table)",
    )


def _plan_command(sub: _Commands) -> None:
    plan = _command(
        sub,
        "plan",
        "chunks, tokens and cost per endpoint, before any call (nothing is written)",
        [
            "docroute plan --config docroute.yaml",
            "docroute plan --budget 2.50 --format json   # is $2.50 enough?",
            "docroute plan --full                        # the cost without reusing answers",
        ],
    )
    _config_arg(plan)
    _budget_arg(plan, "check against this budget in USD (default: the config's budget.run_usd)")
    plan.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="a table for people, JSON for programs (default: %(default)s)",
    )
    _reuse_args(plan)


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
        "older ones are asked for again (default: the config's reuse.since)",
    )


def _rerun_command(sub: _Commands) -> None:
    rerun = _command(
        sub,
        "rerun",
        "process a run's failed/skipped chunks as a child run",
        [
            "docroute rerun 20260101-020000-abcdef",
            "docroute rerun 20260101-020000-abcdef --reason budget_exhausted --budget 3",
            "docroute rerun 20260101-020000-abcdef --provider mistral-eu "
            "--set task.max_output_tokens=2048",
        ],
    )
    rerun.add_argument("run_id", metavar="RUN_ID", help="the run whose chunks to process again")
    _config_arg(rerun)
    _budget_arg(rerun, "budget of the child run in USD (default: the config's budget.run_usd)")
    rerun.add_argument(
        "--status",
        action="append",
        choices=["failed", "skipped", "succeeded"],
        help="which results to rerun (repeatable; default: failed and skipped)",
    )
    rerun.add_argument(
        "--reason",
        action="append",
        help="only results with this reason, e.g. budget_exhausted, no_route "
        "(repeatable; default: any reason)",
    )
    rerun.add_argument(
        "--provider",
        action="append",
        help="only chunks that had an attempt at this provider (repeatable; default: any provider)",
    )
    rerun.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value for the child run, e.g. task.max_output_tokens=2048 "
        "(VALUE is YAML; repeatable; default: none)",
    )
    rerun.add_argument(
        "--force",
        action="store_true",
        help="allow a schema or prompt change although the family has succeeded answers",
    )
    rerun.add_argument(
        "--simulate", action="store_true", help="use the simulator for every provider"
    )


def _report_command(sub: _Commands) -> None:
    report = _command(
        sub,
        "report",
        "write a run's report: one HTML file with charts that opens offline",
        [
            "docroute report 20260101-020000-abcdef",
            "docroute report 20260101-020000-abcdef --out /tmp/night.html",
        ],
        "Spend by endpoint and region, outcomes and failure reasons, latency, quota use "
        "against the config's RPM/TPM, budget burn-down, the most expensive documents and "
        "the root's recent nights. Every run also writes its own into <root>/reports/.",
    )
    report.add_argument("run_id", metavar="RUN_ID", help="the run to report on")
    _config_arg(report)
    report.add_argument(
        "--root",
        type=_root_arg,
        help="output root, a folder or a URI like s3://bucket/prefix "
        "(default: the config's, else ./docroute-output)",
    )
    report.add_argument(
        "--out",
        type=Path,
        help="where to write the HTML file (default: ./report-RUN_ID.html)",
    )


def _audit_command(sub: _Commands) -> None:
    audit = _command(
        sub,
        "audit",
        "check a run's promises from the stored data alone",
        [
            "docroute audit 20260101-020000-abcdef",
            "docroute audit 20260101-020000-abcdef --format json --root s3://bucket/docroute",
        ],
        "Exit code 0 when every check holds, 1 when one does not.",
    )
    audit.add_argument("run_id", metavar="RUN_ID", help="the run to check")
    _where_args(audit)


def _compact_command(sub: _Commands) -> None:
    compact = _command(
        sub,
        "compact",
        "merge a run's (or every run's) small Parquet parts",
        ["docroute compact", "docroute compact 20260101-020000-abcdef --root ./docroute-output"],
    )
    compact.add_argument(
        "run_id", metavar="RUN_ID", nargs="?", help="the run to compact (default: every run)"
    )
    _where_args(compact)


def _recover_command(sub: _Commands) -> None:
    recover = _command(
        sub,
        "recover",
        "record what killed runs journaled (ledger, results) and mark them interrupted",
        ["docroute recover", "docroute recover --root s3://bucket/docroute"],
    )
    _where_args(recover)


def _runs_command(sub: _Commands) -> None:
    runs = _command(
        sub,
        "runs",
        "list runs with status, counts and spend",
        ["docroute runs", "docroute runs --limit 5 --format csv > runs.csv"],
    )
    _where_args(runs)
    runs.add_argument(
        "--limit", type=int, default=20, help="how many runs, newest first (default: %(default)s)"
    )


def _sql_command(sub: _Commands) -> None:
    sql = _command(
        sub,
        "sql",
        "query runs, documents, chunks, results, ledger (read-only)",
        [
            'docroute sql "SELECT provider, sum(cost_usd) AS usd FROM ledger GROUP BY 1"',
            'docroute sql "SELECT status, count(*) FROM effective_results GROUP BY 1" '
            "--format json",
        ],
    )
    sql.add_argument(
        "query",
        metavar="QUERY",
        help="one read-only DuckDB statement over the root's tables (e.g. runs, documents, "
        "chunks, results, ledger, effective_results)",
    )
    _where_args(sql)


def _serve_command(sub: _Commands) -> None:
    serve = _command(
        sub,
        "serve",
        "run the nightly schedule on this machine",
        [
            "docroute serve --config docroute.yaml",
            'docroute serve --cron "30 1 * * *" --timezone Europe/Zurich',
        ],
    )
    _config_arg(serve)
    serve.add_argument(
        "--cron", default="0 2 * * *", help='when to run, in cron syntax (default: "%(default)s")'
    )
    serve.add_argument(
        "--timezone", default="UTC", help="time zone of --cron (default: %(default)s)"
    )
    serve.add_argument("--name", default="nightly", help="deployment name (default: %(default)s)")
    serve.add_argument(
        "--port",
        type=int,
        default=4200,
        help="port of the local Prefect server, when PREFECT_API_URL names none "
        "(default: %(default)s)",
    )


def _simulate_command(sub: _Commands) -> None:
    sim = _command(
        sub,
        "simulate",
        "serve the provider simulator in the foreground",
        ["docroute simulate --config docroute.yaml --port 8900"],
        "Serves one simulated endpoint per configured provider on 127.0.0.1; Ctrl-C stops.",
    )
    _config_arg(sim)
    sim.add_argument(
        "--port",
        type=int,
        default=0,
        help="port on 127.0.0.1 (default: %(default)s, any free port)",
    )


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="docroute.yaml (default: $DOCROUTE_CONFIG, else ./docroute.yaml)",
    )


def _budget_arg(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--budget", type=_usd, metavar="USD", help=text)


def _where_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument(
        "--root",
        type=_root_arg,
        help="output root, a folder or a URI like s3://bucket/prefix "
        "(default: the config's, else ./docroute-output)",
    )
    p.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="how to print the result (default: %(default)s)",
    )


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
