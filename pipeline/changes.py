"""What changed in the corpus since last night: new, changed, unchanged, deleted documents.

    before = last_night(store, cfg)                # the latest full nightly run, or None
    rows = deleted_rows(store, before, run_id)     # its documents run_id did not read
    tally = Changes.against(store, before)         # ``docroute plan``'s counts
    tally.document(path); tally.chunk(key)         # tonight's corpus, as it is read
    tally.finish()                                 # tally.new, .changed, .unchanged, .deleted

"Last night" is the latest nightly run from scratch on the root over the same corpus and
schema whose corpus was read to the end (``succeeded`` or ``completed_with_failures``):
its ``documents`` rows are the corpus as it was then. A document is *new* when its path
was not there, *unchanged* when its chunks' idempotency keys are the ones it had then,
*changed* otherwise; a path that was there and is gone tonight is *deleted*. (What a run
sends is decided by reuse, not by this: an unchanged document whose answer cannot be
reused, e.g. one that failed last night, is still sent.) A run records
its deleted documents in the ``documents`` table (``status = 'deleted'``) when it has read
the whole corpus, so a document that vanished is visible in SQL, not only by its absence.
"""

from __future__ import annotations

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
    return set(_read_documents(store, run_id))


def _read_documents(store: Store, run_id: str) -> dict[str, str]:
    """Path → doc id of the documents run ``run_id`` read (its deleted rows left out)."""
    rows = store.read(
        "SELECT path, doc_id FROM documents WHERE run_id = ? AND status <> 'deleted'", [run_id]
    ).rows
    return dict(rows)


def deleted_rows(store: Store, before: RunRecord, run_id: str) -> list[DocumentRow]:
    """A ``deleted`` document row of run ``run_id`` for each document ``before`` read that
    ``run_id`` did not."""
    recorded = {
        p for (p,) in store.read("SELECT path FROM documents WHERE run_id = ?", [run_id]).rows
    }
    then = _read_documents(store, before.run_id)
    return [
        DocumentRow(
            run_id=run_id,
            doc_id=then[path],
            path=path,
            size_bytes=0,
            status="deleted",
            reason="gone",
            message=f"read by run {before.run_id}; not in the corpus any more",
        )
        for path in sorted(set(then) - recorded)  # once, also when resumed
    ]


def chunk_keys(store: Store, run_id: str) -> dict[str, set[str]]:
    """Each document path of run ``run_id`` → the idempotency keys of its chunks."""
    keys: dict[str, set[str]] = {}
    rows = store.read(
        "SELECT path, idem_key FROM results WHERE run_id = ? AND idem_key IS NOT NULL", [run_id]
    ).rows
    for path, key in rows:
        keys.setdefault(path, set()).add(key)
    for path in corpus_paths(store, run_id):
        keys.setdefault(path, set())  # a document with no chunk (unreadable, empty)
    return keys


@dataclass(slots=True)
class Changes:
    """``docroute plan``'s tally of tonight's documents against last night's run: fed the
    corpus as it is read (``document``, then its chunks' keys), then ``finish``.

    A document is unchanged when its chunks' keys are last night's (same text, schema,
    prompt and model policy), whether or not their answers can be reused.
    """

    since_run_id: str | None = None
    """The run compared with (``None``: no earlier full run; every document is new)."""
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    deleted_paths: list[str] = field(default_factory=list)
    """The first ``SHOWN`` deleted paths, sorted."""
    _before: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _path: str | None = field(default=None, repr=False)
    _keys: set[str] = field(default_factory=set, repr=False)
    _seen: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def against(cls, store: Store, before: RunRecord | None) -> Changes:
        """A tally against ``before`` (``last_night``), or against nothing."""
        if before is None:
            return cls()
        return cls(since_run_id=before.run_id, _before=chunk_keys(store, before.run_id))

    def document(self, path: str) -> None:
        """The next document of tonight's corpus starts."""
        self._count()
        self._path, self._keys = path, set()
        self._seen.add(path)

    def chunk(self, key: str) -> None:
        """A chunk of the current document, by idempotency key."""
        self._keys.add(key)

    def finish(self) -> None:
        """The corpus has been read: count the last document and the deleted ones."""
        self._count()
        gone = sorted(set(self._before) - self._seen)
        self.deleted = len(gone)
        self.deleted_paths = gone[:SHOWN]

    def _count(self) -> None:
        if self._path is None:
            return
        if self._path not in self._before:
            self.new += 1
        elif self._keys == self._before[self._path]:
            self.unchanged += 1
        else:
            self.changed += 1
        self._path = None

    def to_dict(self) -> dict[str, object]:
        return {
            "since_run_id": self.since_run_id,
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "deleted_paths": self.deleted_paths,
        }


__all__ = ["SHOWN", "Changes", "chunk_keys", "corpus_paths", "deleted_rows", "last_night"]
