"""Running tallies of a run, and the one-line progress display built from them.

progress = Progress(budget_usd=5.0)
progress.add(result)
progress.line()   # "120 chunks · 110 ok · 4 failed · 6 skipped · 18 docs · $0.0123 of $5.00 (0.2%)"
"""

from __future__ import annotations

import threading
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def chunks(self) -> int:
        return self.succeeded + self.failed + self.skipped

    def add(self, result: Result) -> None:
        with self._lock:
            if result.status == "succeeded":
                self.succeeded += 1
            elif result.status == "failed":
                self.failed += 1
            else:
                self.skipped += 1
            self.spend_usd += result.cost_usd

    def line(self) -> str:
        share = 100 * self.spend_usd / self.budget_usd if self.budget_usd else 0.0
        errors = f" ({self.document_errors} unreadable)" if self.document_errors else ""
        return (
            f"{self.chunks} chunks · {self.succeeded} ok · {self.failed} failed · "
            f"{self.skipped} skipped · {self.documents} docs{errors} · "
            f"${self.spend_usd:.4f} of ${self.budget_usd:.2f} ({share:.1f}%)"
        )
