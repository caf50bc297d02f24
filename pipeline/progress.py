"""Running tallies of a run, and the one-line progress display built from them.

    progress = Progress(budget_usd=5.0)
    progress.add(result)
    progress.line()
    # "120 chunks · 110 ok · 4 failed · 6 skipped · 18 docs · $0.0123 of $5.00 (0.2%)"
    progress.total = 300          # once the corpus has been read to its end
    progress.line()
    # "120/300 chunks (40%) · 110 ok · … · 8.1 chunks/s · ETA 22s · $0.0123 of $5.00
    #  (0.2%) · projected $0.0308"

Rate, ETA and the projected spend count only this attempt's chunks (a resumed run's
earlier ones were done before ``started``); the projection scales what this attempt spent
per chunk to the chunks still to do.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pipeline.models import Result


@dataclass
class Progress:
    budget_usd: float
    spent_before_usd: float = 0.0
    documents: int = 0
    document_errors: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    spend_usd: float = 0.0
    total: int | None = None
    """Chunks the run processes in all (earlier attempts' included), once known."""
    started: float = field(default_factory=time.monotonic)
    _start_chunks: int | None = field(default=None, repr=False)
    _start_usd: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def chunks(self) -> int:
        return self.succeeded + self.failed + self.skipped

    def begin(self) -> None:
        """This attempt starts now, from the tallies it has (a resumed run's earlier ones)."""
        self.started = time.monotonic()
        self._start_chunks, self._start_usd = self.chunks, self.spend_usd

    def add(self, result: Result) -> None:
        with self._lock:
            if result.status == "succeeded":
                self.succeeded += 1
            elif result.status == "failed":
                self.failed += 1
            else:
                self.skipped += 1
            self.spend_usd += result.cost_usd

    def rate(self, now: float | None = None) -> float:
        """Chunks per second this attempt."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        done = self.chunks - (self._start_chunks or 0)
        return done / elapsed if elapsed > 0 else 0.0

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds until the last chunk at this attempt's rate; ``None`` until the total
        and a rate are known."""
        rate = self.rate(now)
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.chunks, 0) / rate

    def projected_usd(self) -> float | None:
        """The run's spend when every chunk is done, at this attempt's cost per chunk."""
        done = self.chunks - (self._start_chunks or 0)
        if self.total is None or done <= 0:
            return None
        per_chunk = (self.spend_usd - self._start_usd) / done
        return self.spend_usd + per_chunk * max(self.total - self.chunks, 0)

    def line(self, now: float | None = None) -> str:
        share = 100 * self.spend_usd / self.budget_usd if self.budget_usd else 0.0
        errors = f" ({self.document_errors} unreadable)" if self.document_errors else ""
        if self.total:
            of = f"{self.chunks}/{self.total} chunks ({100 * self.chunks / self.total:.0f}%)"
        else:
            of = f"{self.chunks} chunks"
        parts = [
            f"{of} · {self.succeeded} ok · {self.failed} failed · {self.skipped} skipped · "
            f"{self.documents} docs{errors}"
        ]
        if self._start_chunks is not None:  # a run under way (``begin``): how fast
            parts.append(f"{self.rate(now):.1f} chunks/s")
            eta = self.eta_s(now)
            if eta is not None and self.chunks < (self.total or 0):
                parts.append(f"ETA {duration(eta)}")
        parts.append(f"${self.spend_usd:.4f} of ${self.budget_usd:.2f} ({share:.1f}%)")
        projected = self.projected_usd()
        if projected is not None and self.chunks < (self.total or 0):
            parts.append(f"projected ${projected:.4f}")
        return " · ".join(parts)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
