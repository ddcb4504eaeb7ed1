"""The index watermark that search and answer responses carry: changes that arrived through this time are
searchable, and how many are still waiting (millrace.events.queue.QueueStats).

Read from the change queue at most once a second per collection in this process, so a query does not hit the
database each time; a read that fails leaves it out of the response (None) instead of failing the search."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from anyio import to_thread

from millrace.events.queue import QueueStats
from serving.schemas import IndexWatermark

log = logging.getLogger("millrace.serving")
TTL_S = 1.0


def of_stats(s: QueueStats) -> IndexWatermark:
    return IndexWatermark(searchable_through=datetime.fromtimestamp(s.watermark, timezone.utc),
                          pending_changes=s.pending, oldest_pending_age_s=round(s.oldest_age_s, 3))


class WatermarkCache:
    def __init__(self, read: Callable[[str], QueueStats], ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.read, self.ttl_s, self.clock = read, ttl_s, clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, IndexWatermark | None]] = {}

    def fresh(self, collection: str) -> tuple[bool, IndexWatermark | None]:
        at, value = self._values.get(collection, (None, None))
        return at is not None and self.clock() - at < self.ttl_s, value

    def get(self, collection: str) -> IndexWatermark | None:
        with self._lock:  # one reader per process refreshes; the others wait for its value
            ok, value = self.fresh(collection)
            if ok:
                return value
            try:
                value = of_stats(self.read(collection))
            except Exception as exc:  # the ledger's database unreachable: search goes on without it
                log.warning("index watermark of %s not read: %s", collection, exc)
                value = None
            self._values[collection] = (self.clock(), value)  # a failure is cached too: no retry storm
            return value

    async def aget(self, collection: str) -> IndexWatermark | None:
        ok, value = self.fresh(collection)
        return value if ok else await to_thread.run_sync(self.get, collection)


_caches: dict[str, WatermarkCache] = {}
_caches_lock = threading.Lock()


def cache_for(settings) -> WatermarkCache:
    """One cache per ledger database in the process (apps in one process share the queue's engine anyway)."""
    from millrace import clients

    # Keyed without resolving the ledger's path: that is a realpath of the home on every request, a fifth of a
    # request's own CPU (measured with cProfile). Two spellings of one home get two caches, which is harmless.
    key = settings.ledger_url or str(settings.home)
    with _caches_lock:
        if key not in _caches:
            _caches[key] = WatermarkCache(lambda collection: clients.change_queue(settings).stats(collection))
        return _caches[key]


async def current(settings) -> IndexWatermark | None:
    """The watermark of the logical collection: changes are queued under the name readers use."""
    return await cache_for(settings).aget(settings.collection)
