"""What changed in the corpus since last night: new, changed, unchanged, deleted documents.

    before = last_night(store, cfg)                # the latest full nightly run, or None
    rows = deleted_rows(store, before, run_id)     # its documents run_id did not read
    paths = corpus_paths(store, before.run_id)     # the corpus as it was then
    tally = Changes(before.run_id)                 # ``docroute plan``'s counts
    tally.document(path, sent=True, before=paths)  # one of tonight's documents
    tally.finish(paths, tonight)                   # and the deleted ones

"Last night" is the latest nightly run from scratch on the root over the same corpus and
schema whose corpus was read to the end (``succeeded`` or ``completed_with_failures``):
its ``documents`` rows are the corpus as it was then. A document is *new* when its path
was not there, *unchanged* when every chunk of it reuses an answer (nothing to send),
*changed* otherwise; a path that was there and is gone tonight is *deleted*. A run records
its deleted documents in the ``documents`` table (``status = 'deleted'``) when it has read
the whole corpus, so a document that vanished is visible in SQL, not only by its absence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.config import Config
from pipeline.store import DocumentRow, RunRecord, Store

#: How many deleted paths a summary or plan lists (the count is always whole).
SHOWN = 20


def last_night(store: Store, cfg: Config, *, not_run: str | None = None) -> RunRecord | None:
    """The latest nightly run from scratch over ``cfg``'s corpus and schema that read the
    whole corpus, other than ``not_run``; ``None`` if there is none."""
    if not store.has_tables(["runs", "documents"]):
        return None
    found = store.read(
        "SELECT * FROM runs WHERE flow = 'nightly_batch' AND parent_run_id IS NULL "
        "AND corpus = ? AND schema_name = ? AND run_id <> ? "
        "AND status IN ('succeeded', 'completed_with_failures') "
        "ORDER BY started_at DESC LIMIT 1",
        [str(cfg.corpus.path), cfg.task.schema_name, not_run or ""],
    ).to_dicts()
    return RunRecord.from_row(found[0]) if found else None


def corpus_paths(store: Store, run_id: str) -> set[str]:
    """The paths of the documents run ``run_id`` read (its deleted rows left out)."""
    rows = store.read(
        "SELECT path FROM documents WHERE run_id = ? AND status <> 'deleted'", [run_id]
    ).rows
    return {path for (path,) in rows}


def deleted_rows(store: Store, before: RunRecord, run_id: str) -> list[DocumentRow]:
    """A ``deleted`` document row of run ``run_id`` for each document ``before`` read that
    ``run_id`` did not."""
    recorded = {
        p for (p,) in store.read("SELECT path FROM documents WHERE run_id = ?", [run_id]).rows
    }
    gone = sorted(corpus_paths(store, before.run_id) - recorded)  # once, also when resumed
    if not gone:
        return []
    ids = dict(
        store.read(
            "SELECT path, doc_id FROM documents WHERE run_id = ? AND status <> 'deleted'",
            [before.run_id],
        ).rows
    )
    return [
        DocumentRow(
            run_id=run_id,
            doc_id=ids[path],
            path=path,
            size_bytes=0,
            status="deleted",
            reason="gone",
            message=f"read by run {before.run_id}; not in the corpus any more",
        )
        for path in gone
    ]


@dataclass(slots=True)
class Changes:
    """``docroute plan``'s tally of documents against last night's run."""

    since_run_id: str | None = None
    """The run compared with (``None``: no earlier full run; every document is new)."""
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    deleted_paths: list[str] = field(default_factory=list)
    """The first ``SHOWN`` deleted paths, sorted."""

    def document(self, path: str, *, sent: bool, before: set[str]) -> None:
        """Count one of tonight's documents: ``sent`` when a chunk of it will be sent."""
        if path not in before:
            self.new += 1
        elif sent:
            self.changed += 1
        else:
            self.unchanged += 1

    def finish(self, before: set[str], tonight: Iterable[str]) -> None:
        """Count the documents of ``before`` that are not in ``tonight``."""
        gone = sorted(before - set(tonight))
        self.deleted = len(gone)
        self.deleted_paths = gone[:SHOWN]


__all__ = ["SHOWN", "Changes", "corpus_paths", "deleted_rows", "last_night"]
