"""Leases: which machine runs a run, visible to every machine that shares an object-store root.

A run lock (``journal.RunLock``) is an ``flock`` in a local state folder, so on an
object-store root it only speaks for one machine. A lease is an object in the bucket,
``<root>/_leases/<run_id>.json``, naming its holder (host, pid, state folder, a random
token) and when it expires; the holder renews it every ``HEARTBEAT_S``::

    lease = Lease.acquire(store.remote, run_id, state=store.state_dir, config_hash=h)
    ...                                  # the run; a heartbeat thread renews the lease
    lease.release()                      # deletes the object (if it is still ours)

    info = read_lease(store.remote, run_id)
    if info is not None and info.alive(store.state_dir): ...   # someone runs it right now

``recover`` does not mark a run ``interrupted`` while its lease is alive, and
``Lease.acquire`` refuses (``LeaseHeldError``) a run whose lease another holder keeps fresh,
so ``docroute run --resume`` on machine B cannot bill again what machine A is running.

Race window, honestly: pyarrow filesystems have no conditional PUT, so acquiring is
"read, write ours, read back, compare the token". Two machines that both read "no
lease" within the same few milliseconds both write; the read back then shows one token
(the last PUT wins), and the other machine refuses. A machine whose read back came before
the other's PUT can still believe it won: the window is one PUT's latency, on a run id
that two machines rarely start at the same moment (resumes are started by a person or by
a retry minutes later). Clocks are trusted to within a few seconds (NTP): ``expires_at``
is the holder's clock, read against the reader's.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .remote import RemoteRoot

log = logging.getLogger(__name__)

LEASE_DIR = "_leases"
#: Seconds between renewals. Often enough that a few failed PUTs in a row (a throttled
#: bucket, a slow network) still leave the lease fresh; rare enough to cost nothing.
HEARTBEAT_S = 10.0
#: How long a lease stays fresh without renewal: six heartbeats. A machine that died is
#: taken for dead after a minute, soon enough for a person (or a Prefect retry, 5 minutes
#: later) who wants to resume its run, long enough to survive a GC pause or a slow PUT.
TTL_S = 60.0


class LeaseHeldError(Exception):
    """Another live holder keeps the run's lease fresh."""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease object's content (times are epoch seconds of the holder's clock)."""

    run_id: str
    host: str
    pid: int
    state: str
    """The holder's local state folder: with the host, which machine holds it."""
    token: str
    acquired_at: float
    expires_at: float
    config_hash: str | None = None
    family_id: str | None = None
    allocation_usd: float | None = None
    """Its share of ``budget.monthly_usd`` (see ``allocations``); None without a monthly cap."""

    def fresh(self, now: float | None = None) -> bool:
        return (now or time.time()) < self.expires_at

    def mine(self, state: Path) -> bool:
        """Held from this machine (same host and state folder), by any process."""
        return self.host == socket.gethostname() and self.state == str(state)

    def alive(self, state: Path) -> bool:
        """Whether the holder runs it now: a fresh lease, unless it is this machine's and its
        run lock is free (the local lock is the truth on its own machine: the holder died)."""
        if not self.fresh():
            return False
        if self.mine(state):
            from .journal import RunLock

            return RunLock.held(state, self.run_id)
        return True

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.acquired_at))
        return f"host {self.host} pid {self.pid} since {since}"


def lease_path(run_id: str) -> str:
    return f"{LEASE_DIR}/{run_id}.json"


def read_lease(root: RemoteRoot, run_id: str) -> LeaseInfo | None:
    """The lease of ``run_id`` as stored now, or None (none, or unreadable)."""
    return _parse(root.read_text(lease_path(run_id)), run_id)


def read_leases(root: RemoteRoot) -> list[LeaseInfo]:
    """Every lease in the bucket (one listing); objects gone or torn meanwhile are skipped."""
    found = []
    for info in root.list_files(LEASE_DIR, recursive=False):
        if info.base_name.endswith(".json"):
            lease = _parse(root.read_text(root.rel(info.path)), info.base_name[:-5])
            if lease is not None:
                found.append(lease)
    return found


def _parse(text: str | None, run_id: str) -> LeaseInfo | None:
    if text is None:
        return None
    try:
        return LeaseInfo(**json.loads(text))
    except (ValueError, TypeError):
        log.warning("lease of run %s is unreadable; taken as absent", run_id)
        return None


class Lease:
    """A lease this process holds, renewed by a daemon thread until ``release``."""

    def __init__(self, root: RemoteRoot, info: LeaseInfo, heartbeat_s: float) -> None:
        self.root = root
        self.info = info
        self._ttl_s = info.expires_at - info.acquired_at
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name=f"lease-{info.run_id}", daemon=True
        )

    @classmethod
    def acquire(
        cls,
        root: RemoteRoot,
        run_id: str,
        *,
        state: Path,
        config_hash: str | None = None,
        family_id: str | None = None,
        allocation_usd: float | None = None,
        ttl_s: float = TTL_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> Lease:
        """Take ``run_id``'s lease, or raise ``LeaseHeldError`` naming its live holder."""
        current = read_lease(root, run_id)
        if current is not None and current.alive(state):
            raise LeaseHeldError(_busy(root, current))
        now = time.time()
        info = LeaseInfo(
            run_id=run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            state=str(state),
            token=secrets.token_hex(8),
            acquired_at=now,
            expires_at=now + ttl_s,
            config_hash=config_hash,
            family_id=family_id,
            allocation_usd=allocation_usd,
        )
        lease = cls(root, info, heartbeat_s)
        lease._put(info)
        back = read_lease(root, run_id)
        if back is None or back.token != info.token:  # another machine's PUT came last
            raise LeaseHeldError(_busy(root, back or info))
        lease._thread.start()
        return lease

    def update(self, **changes: object) -> None:
        """Change fields of the lease (e.g. a smaller allocation) and write it now."""
        with self._lock:
            self.info = replace(self.info, **changes)  # type: ignore[arg-type]
            self._put(self.info)

    def renew(self) -> bool:
        """Push ``expires_at`` one TTL ahead; False if another holder took the lease over."""
        with self._lock:
            stored = read_lease(self.root, self.info.run_id)
            if stored is not None and stored.token != self.info.token:
                log.error(
                    "run %s: its lease was taken over by %s; this process no longer holds it",
                    self.info.run_id,
                    stored.describe(),
                )
                return False
            self.info = replace(self.info, expires_at=time.time() + self._ttl_s)
            self._put(self.info)
            return True

    def release(self) -> None:
        """Stop renewing and delete the lease object if it is still ours."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        with self._lock:
            stored = read_lease(self.root, self.info.run_id)
            if stored is not None and stored.token == self.info.token:
                self.root.delete(lease_path(self.info.run_id))

    def _put(self, info: LeaseInfo) -> None:
        self.root.write_text(lease_path(info.run_id), json.dumps(asdict(info)))

    def _beat(self, heartbeat_s: float) -> None:
        while not self._stop.wait(heartbeat_s):
            try:
                if not self.renew():
                    return
            except OSError as exc:  # a failed PUT: the next beat tries again within the TTL
                log.warning("run %s: lease renewal failed (%s)", self.info.run_id, exc)


def _busy(root: RemoteRoot, holder: LeaseInfo) -> str:
    return (
        f"run {holder.run_id} is running on another machine ({holder.describe()}, lease "
        f"{root.uri / lease_path(holder.run_id)} fresh until "
        f"{time.strftime('%H:%M:%SZ', time.gmtime(holder.expires_at))}); wait for it to end, "
        f"then resume it with `docroute run --resume {holder.run_id}`"
    )


__all__ = [
    "HEARTBEAT_S",
    "LEASE_DIR",
    "TTL_S",
    "Lease",
    "LeaseHeldError",
    "LeaseInfo",
    "lease_path",
    "read_lease",
    "read_leases",
]
