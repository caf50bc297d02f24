"""A run's progress bar on a terminal (rich), while its log keeps plain lines.

    with progress_bar(sys.stderr.isatty()):      # the command, around the flow
        ...                                      # the flow calls show(run.progress)

On a terminal ``docroute run`` draws one bar: chunks done of the total (once known), the
rate, the ETA, spend and its projection. Log records still go where they go (the Prefect
API gets every progress line); on the terminal they print above the bar, through the
bar's own console, so nothing garbles it, and the periodic progress lines (marked
``PROGRESS``) are left out there: the bar says the same. Without a terminal (a pipe, a
log file, a Prefect worker) nothing changes: ``show`` does nothing and the lines print.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.progress import Progress, duration

#: ``extra=`` of the periodic progress records: the bar replaces them on a terminal.
PROGRESS = {"docroute_progress": True}
#: How often the flow redraws the bar (seconds).
REFRESH_S = 0.5

_bar: Any = None  # the live bar and its task while a command shows one
_task: Any = None


def show(progress: Progress) -> None:
    """Redraw the bar from ``progress`` (nothing without a bar)."""
    if _bar is None:
        return
    eta = progress.eta_s()
    projected = progress.projected_usd()
    detail = (
        f"{progress.succeeded} ok · {progress.failed} failed · {progress.skipped} skipped · "
        f"{progress.rate():.1f}/s"
        + (f" · ETA {duration(eta)}" if eta is not None else "")
        + f" · ${progress.spend_usd:.4f} of ${progress.budget_usd:.2f}"
        + (f" → ${projected:.4f}" if projected is not None else "")
    )
    _bar.update(_task, completed=progress.chunks, total=progress.total, detail=detail)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[None]:
    """A bar on stderr for the block when ``enabled`` (stderr is a terminal)."""
    global _bar, _task
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.progress import Progress as Bar

    console = Console(file=sys.stderr)
    bar = Bar(
        TextColumn("chunks"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=True,  # the summary follows; the bar goes
        redirect_stdout=False,
        redirect_stderr=False,
    )
    swapped = _consoles_to(console)
    quiet = _NoProgressLines()
    for handler, _ in swapped:
        handler.addFilter(quiet)
    try:
        with bar:
            _bar, _task = bar, bar.add_task("chunks", total=None, detail="starting")
            yield
    finally:
        _bar = _task = None
        for handler, before in swapped:
            handler.console = before
            handler.removeFilter(quiet)


class _NoProgressLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "docroute_progress", False)


def _consoles_to(console: Any) -> list[tuple[Any, Any]]:
    """Point every Prefect console handler at ``console`` (so records print above the
    bar); the handlers and their consoles before, to put back."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(
        logger for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    )]  # fmt: skip
    found: dict[int, tuple[Any, Any]] = {}
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and id(handler) not in found:
                found[id(handler)] = (handler, handler.console)
                handler.console = console
    return list(found.values())


__all__ = ["PROGRESS", "REFRESH_S", "progress_bar", "show"]
