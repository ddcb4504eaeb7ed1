"""One writer per collection: a lease row in the ledger that a live run renews and a killed run lets expire.

Two runs on one collection would each see the other's chunks in Milvus' count(*) and report a false mismatch, and
could interleave a document's versions. The second run waits, saying for whom, until the lease is free, expired,
or held by a process on this host that no longer exists.

A lease is re-entrant within its process: a run that already holds it (a rebuild, which ingests each source into
its new collection) can open it again for the same run id, and the inner holder neither renews nor releases it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from millrace.ledger.book import Ledger, leases

log = logging.getLogger("millrace")

# The leases this process holds now, by (ledger URL, collection): an inner Lease of the same run shares them.
_held: dict[tuple[str, str], "Lease"] = {}
_held_lock = threading.Lock()


class LeaseLostError(RuntimeError):
    """Another run took this collection's lease (ours expired): stop before writing more."""


class LeaseTimeoutError(RuntimeError):
    """The collection stayed leased to another run for longer than this run was willing to wait."""


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_here(holder: str) -> bool:
    """A holder on this host whose process is gone: its lease need not be waited out."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """`with Lease(...)`: acquire (waiting if need be), renew in the background, release on exit."""

    def __init__(self, ledger: Ledger, collection: str, run_id: str, source: str, ttl_s: float = 60.0,
                 wait_s: float = 3600.0, on_wait=None):
        self.ledger, self.collection, self.run_id, self.source = ledger, collection, run_id, source
        self.ttl_s, self.wait_s = ttl_s, wait_s
        self.on_wait = on_wait or (lambda message: log.warning("%s", message))
        self.holder = holder_id()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outer: Lease | None = None  # the lease of this run that this process already holds, if any
        self.waited_s = 0.0

    @property
    def _key(self) -> tuple[str, str]:
        return str(self.ledger.engine.url), self.collection

    def _try(self) -> dict | None:
        """Take the lease if it is free, expired or orphaned; otherwise return who holds it."""
        now = time.time()
        values = dict(run_id=self.run_id, holder=self.holder, source=self.source, acquired_at=now,
                      expires_at=now + self.ttl_s)
        with self.ledger.engine.begin() as conn:
            row = conn.execute(select(leases).where(leases.c.collection == self.collection)).first()
            if row is None:
                try:
                    conn.execute(leases.insert().values(collection=self.collection, **values))
                    return None
                except IntegrityError:  # another run inserted first
                    return {"run_id": "?", "holder": "?", "source": "?", "expires_at": now + self.ttl_s}
            held = dict(row._mapping)
            if held["expires_at"] >= now and held["run_id"] != self.run_id and not _dead_here(held["holder"]):
                return held
            # Compare-and-set on what we read, so two waiters cannot both take an expired lease.
            taken = conn.execute(leases.update().where(
                leases.c.collection == self.collection, leases.c.run_id == held["run_id"],
                leases.c.expires_at == held["expires_at"]).values(**values)).rowcount
            return None if taken == 1 else held

    def acquire(self) -> "Lease":
        with _held_lock:
            outer = _held.get(self._key)
        if outer is not None and outer.run_id == self.run_id and not outer.lost.is_set():
            self._outer, self.lost = outer, outer.lost  # the outer holder renews; losing it stops us both
            return self
        started = time.monotonic()
        last_said = -1e9
        while (held := self._try()) is not None:
            waited = time.monotonic() - started
            if waited > self.wait_s:
                raise LeaseTimeoutError(
                    f"collection {self.collection} is still being written by run {held['run_id']} "
                    f"({held['source']}, process {held['holder']}) after {waited:.0f}s of waiting; try again when it "
                    f"has finished, or raise MILLRACE_LEASE_WAIT_S")
            if waited - last_said >= 10 or last_said < 0:
                self.on_wait(f"waiting for collection {self.collection}: run {held['run_id']} ({held['source']}, "
                             f"process {held['holder']}) is writing it; its lease expires in "
                             f"{max(0.0, held['expires_at'] - time.time()):.0f}s unless renewed")
                last_said = waited
            time.sleep(min(1.0, self.ttl_s / 4))
        self.waited_s = time.monotonic() - started
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.collection}", daemon=True)
        self._thread.start()
        with _held_lock:
            _held[self._key] = self
        return self

    def renew(self) -> bool:
        """Push the expiry out; False (and `lost` set) when another run has taken the lease meanwhile."""
        with self.ledger.engine.begin() as conn:
            renewed = conn.execute(leases.update().where(
                leases.c.collection == self.collection, leases.c.run_id == self.run_id)
                .values(expires_at=time.time() + self.ttl_s)).rowcount
        if renewed == 0:
            self.lost.set()
        return renewed == 1

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # a ledger hiccup: try again next tick; expiry is ttl away
                log.warning("could not renew the lease on %s: %s", self.collection, exc)

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLostError(f"run {self.run_id} lost its lease on collection {self.collection} (it expired and "
                                 "another run took it); stopping before writing more. The next run resumes")

    def release(self) -> None:
        if self._outer is not None:  # the outer holder releases it
            self._outer = None
            return
        with _held_lock:
            if _held.get(self._key) is self:
                del _held[self._key]
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self.ledger.engine.begin() as conn:
            conn.execute(delete(leases).where(leases.c.collection == self.collection,
                                              leases.c.run_id == self.run_id))

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def current(ledger: Ledger, collection: str) -> dict | None:
    """Who holds the collection now (for `millrace status`), or None."""
    with ledger.engine.connect() as conn:
        row = conn.execute(select(leases).where(leases.c.collection == collection)).first()
    if row is None or row.expires_at < time.time():
        return None
    return dict(row._mapping)
