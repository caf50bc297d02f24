"""Live runs of one output root: no twin of a live run, and caps that span runs held across
processes (``budget.monthly_usd``).

    seat = admit(store, run_id=run_id, config_hash=cfg.fingerprint(), family_id=family,
                 run_cap_usd=cfg.budget.run_usd, monthly_usd=cfg.budget.monthly_usd)
    BudgetGuard(cap_usd=granted_usd(store, run_id) or cfg.budget.run_usd, ...)
    ...                                  # the run
    seat.release()                       # its ledger spend counts from now on

Each live run holds a *seat* in ``<state>/_budget/allocations.json`` (``Store.state_dir``),
read and written under an ``flock`` of ``<state>/_budget/allocations.lock``, so two runs
starting at once on one machine are serialized. ``admit``:

1. refuses (``RunConflictError``) when a live run has the same ``Config.fingerprint()``
   or the same family (a rerun or resume of the same runs): it names the live run, its
   host, pid and start, and says to wait or ``--resume`` after it ends;
2. allocates the run's cap: ``min(run cap, monthly_usd − ledger spend of the last 30 days
   by runs without a live seat − allocations of live seats)``. A live seat's allocation
   already covers what its run spent, so that run's ledger rows are not counted again.
   Without ``monthly_usd`` the allocation is the run cap (what it may spend, which the
   monthly cap of another config's run must leave room for).

A seat whose run lock (``journal.RunLock``) nobody holds is stale: its process is gone and
``recover`` turns its journals into ledger rows, which count instead (``admit`` recovers,
under the lock, after deciding which seats are alive, so a run dying in between is counted
once: by its seat).

On an object-store root the seat is also the run's lease (``lease.Lease``, in the bucket,
with its allocation): seats of other machines are their fresh leases. Without a
conditional PUT, two machines admitting in the same instant are settled by writing the
lease and then listing the leases again: a twin seen then refuses both (neither doubles),
and allocations seen then shrink ours. Journals of a machine that died stay on it, so
its unjournaled spend counts only once that machine recovers them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

from .journal import RunLock, recover
from .lease import HEARTBEAT_S, TTL_S, Lease, LeaseHeldError, LeaseInfo, read_leases

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

BUDGET_DIR = "_budget"
#: The rolling window of ``budget.monthly_usd``; equal to ``pipeline.policy.MONTH_WINDOW_S``
#: (the store does not import the policy package, which pulls in ingest and providers).
MONTH_WINDOW_S = 30 * 86_400.0


class RunConflictError(ConfigError):
    """A live run of the same config or family holds this root; the message names it."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One live run's seat."""

    run_id: str
    config_hash: str
    family_id: str
    host: str
    pid: int
    since: float
    allocation_usd: float

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.since))
        return f"host {self.host} pid {self.pid} since {since}"


@dataclass(frozen=True, slots=True)
class Share:
    """How an allocation was reached (for the warning and a second look on remote roots)."""

    allocation_usd: float
    spent_usd: float
    held_usd: float


class Seat:
    """A run's place among the live runs of a root; ``release`` it when the run ends."""

    def __init__(self, store: Store, entry: Entry, lease: Lease | None) -> None:
        self.store = store
        self.entry = entry
        self.lease = lease

    @property
    def allocation_usd(self) -> float:
        return self.entry.allocation_usd

    def release(self) -> None:
        with _locked(self.store.state_dir):
            entries = _load(self.store.state_dir)
            if entries.pop(self.entry.run_id, None) is not None:
                _save(self.store.state_dir, entries)
        if self.lease is not None:
            self.lease.release()


def admit(
    store: Store,
    *,
    run_id: str,
    config_hash: str,
    family_id: str,
    run_cap_usd: float,
    monthly_usd: float | None,
    ttl_s: float = TTL_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> Seat:
    """Give ``run_id`` a seat and its allocation, or raise ``RunConflictError``."""
    state = store.state_dir
    with _locked(state):
        live = _live(store, exclude=run_id)
        _refuse_twin(live.values(), config_hash, family_id)
        share = _share(store, live, run_id, run_cap_usd, monthly_usd, recovering=True)
        entry = Entry(
            run_id=run_id,
            config_hash=config_hash,
            family_id=family_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            since=time.time(),
            allocation_usd=share.allocation_usd,
        )
        lease = None
        if store.remote is not None:
            lease, entry = _lease(store, entry, live, share, monthly_usd, ttl_s, heartbeat_s)
        local = {rid: e for rid, e in _load(state).items() if rid in live}
        _save(state, local | {run_id: entry})
    if entry.allocation_usd < run_cap_usd - 1e-12:
        _warn(entry, run_cap_usd, monthly_usd, share, live)
    return Seat(store, entry, lease)


def granted_usd(store: Store, run_id: str) -> float | None:
    """The allocation this process was admitted with for ``run_id`` (None: not admitted)."""
    entry = _load(store.state_dir).get(run_id)
    if entry is None or entry.pid != os.getpid() or entry.host != socket.gethostname():
        return None
    return entry.allocation_usd


def monthly_share(store: Store, run_id: str, run_cap_usd: float, monthly_usd: float) -> float:
    """What ``admit`` would allocate now, without taking a seat (a ``Run`` built directly)."""
    return _share(
        store, _live(store, exclude=run_id), run_id, run_cap_usd, monthly_usd
    ).allocation_usd


# -- the parts of admit ---------------------------------------------------------------------


def _live(store: Store, *, exclude: str) -> dict[str, Entry]:
    """Seats of other runs that are alive: local ones by their run lock, other machines' by
    their fresh lease."""
    state = store.state_dir
    live = {
        rid: e for rid, e in _load(state).items() if rid != exclude and RunLock.held(state, rid)
    }
    if store.remote is not None:
        for lease in read_leases(store.remote):
            if lease.run_id != exclude and lease.run_id not in live and lease.alive(state):
                live[lease.run_id] = _from_lease(lease)
    return live


def _refuse_twin(live: Iterable[Entry], config_hash: str, family_id: str) -> None:
    for other in live:
        if other.config_hash == config_hash or other.family_id == family_id:
            raise RunConflictError(_twin_message(other, config_hash))


def _twin_message(other: Entry, config_hash: str, *, simultaneous: bool = False) -> str:
    same = (
        f"config {config_hash}" if other.config_hash == config_hash else f"family {other.family_id}"
    )
    when = "started at the same moment" if simultaneous else "is running"
    return (
        f"run {other.run_id} of the same {same} {when} on this output root "
        f"({other.describe()}); a second run would spend the same budget again. Wait for "
        f"it to end (or resume it with `docroute run --resume {other.run_id}` once it has "
        "stopped), or run a different config"
    )


def _share(
    store: Store,
    live: dict[str, Entry],
    run_id: str,
    run_cap_usd: float,
    monthly_usd: float | None,
    *,
    recovering: bool = False,
) -> Share:
    if monthly_usd is None:
        return Share(run_cap_usd, 0.0, 0.0)
    if recovering:
        recover(store)  # runs that ended after the caller's recover: their journals count
    held = sum(e.allocation_usd for e in live.values())
    spent = float(
        store.read(
            "SELECT coalesce(sum(cost_usd), 0) FROM ledger "
            "WHERE started_at >= to_timestamp(?) AND NOT list_contains(?, run_id)",
            [time.time() - MONTH_WINDOW_S, [run_id, *live]],
        ).rows[0][0]
    )
    return Share(max(min(run_cap_usd, monthly_usd - spent - held), 0.0), spent, held)


def _lease(
    store: Store,
    entry: Entry,
    live: dict[str, Entry],
    share: Share,
    monthly_usd: float | None,
    ttl_s: float,
    heartbeat_s: float,
) -> tuple[Lease, Entry]:
    """Write the run's lease, then look again: a twin or an allocation that appeared meanwhile."""
    assert store.remote is not None
    try:
        lease = Lease.acquire(
            store.remote,
            entry.run_id,
            state=store.state_dir,
            config_hash=entry.config_hash,
            family_id=entry.family_id,
            allocation_usd=entry.allocation_usd,
            ttl_s=ttl_s,
            heartbeat_s=heartbeat_s,
        )
    except LeaseHeldError as exc:
        raise RunConflictError(str(exc)) from None
    try:
        again = _live(store, exclude=entry.run_id)
        new = [e for rid, e in again.items() if rid not in live]
        for other in new:
            if other.config_hash == entry.config_hash or other.family_id == entry.family_id:
                raise RunConflictError(_twin_message(other, entry.config_hash, simultaneous=True))
        if new and monthly_usd is not None:
            held = share.held_usd + sum(e.allocation_usd for e in new)
            smaller = max(min(entry.allocation_usd, monthly_usd - share.spent_usd - held), 0.0)
            if smaller < entry.allocation_usd:
                entry = replace(entry, allocation_usd=smaller)
                lease.update(allocation_usd=smaller)
                live.update({e.run_id: e for e in new})
    except BaseException:
        lease.release()
        raise
    return lease, entry


def _warn(
    entry: Entry,
    run_cap_usd: float,
    monthly_usd: float | None,
    share: Share,
    live: dict[str, Entry],
) -> None:
    holders = ", ".join(f"{e.run_id} ({e.allocation_usd:.2f} USD)" for e in live.values())
    log.warning(
        "run %s: budget %.2f USD instead of its cap of %.2f USD: budget.monthly_usd %.2f USD, "
        "of which %.2f USD were spent in the last 30 days by runs that ended and %.2f USD "
        "are allocated to live runs%s",
        entry.run_id,
        entry.allocation_usd,
        run_cap_usd,
        monthly_usd or 0.0,
        share.spent_usd,
        share.held_usd,
        f" ({holders})" if holders else "",
    )


# -- the state file -------------------------------------------------------------------------


@contextmanager
def _locked(state: Path) -> Iterator[None]:
    """The root's budget lock (held for milliseconds: a few reads and one small write)."""
    folder = state / BUDGET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "allocations.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(state: Path) -> dict[str, Entry]:
    path = state / BUDGET_DIR / "allocations.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["runs"]
        return {row["run_id"]: Entry(**row) for row in rows}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, KeyError):
        log.warning("%s is unreadable; its seats are taken as stale", path)
        return {}


def _save(state: Path, entries: dict[str, Entry]) -> None:
    """Replace the file atomically (readers without the lock see old or new, never half)."""
    path = state / BUDGET_DIR / "allocations.json"
    tmp = path.with_name(f".allocations.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"runs": [asdict(e) for e in entries.values()]}), encoding="utf-8")
    os.replace(tmp, path)


def _from_lease(lease: LeaseInfo) -> Entry:
    return Entry(
        run_id=lease.run_id,
        config_hash=lease.config_hash or "",
        family_id=lease.family_id or lease.run_id,
        host=lease.host,
        pid=lease.pid,
        since=lease.acquired_at,
        allocation_usd=lease.allocation_usd or 0.0,
    )


__all__ = ["RunConflictError", "Seat", "admit", "granted_usd", "monthly_share"]
