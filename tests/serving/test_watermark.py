"""The index watermark on search and answer responses: read from the real change queue, cached for a second, and
left out (None) rather than failing a search when the queue cannot be read."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from millrace import clients
from millrace.events.queue import Change, ChangeQueue
from serving.watermark import WatermarkCache
from tests.serving.harness import serve_app


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.unit
def test_the_watermark_is_read_at_most_once_a_second(tmp_path):
    queue = ChangeQueue(f"sqlite:///{tmp_path}/ledger.sqlite")
    reads, clock = [], Clock()

    def read(collection):
        reads.append(collection)
        return queue.stats(collection)

    cache = WatermarkCache(read, ttl_s=1.0, clock=clock)
    assert cache.get("c").pending_changes == 0
    queue.put([Change(collection="c", source="s3://b/", object="x.pdf")], now=1000.0)
    clock.t = 0.5
    assert cache.get("c").pending_changes == 0 and reads == ["c"]  # still the cached value
    clock.t = 1.5
    w = cache.get("c")
    assert (w.pending_changes, w.searchable_through.timestamp()) == (1, 1000.0) and reads == ["c", "c"]
    assert w.searchable_through.utcoffset().total_seconds() == 0


@pytest.mark.unit
def test_an_unreadable_queue_leaves_the_watermark_out(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    cache = WatermarkCache(lambda c: ChangeQueue(f"sqlite:///{tmp_path}/file/ledger.sqlite").stats(c))
    assert cache.get("c") is None


@pytest.mark.integration
def test_search_responses_carry_the_watermark(index):
    settings, _ = index
    queue = clients.change_queue(settings)
    enqueued = time.time() - 40
    queue.put([Change(collection=settings.collection, source="s3://bucket/docs", object="new.pdf")], now=enqueued)
    time.sleep(1.1)  # a search of an earlier test in this process may have cached the empty queue's watermark
    try:
        with serve_app(settings) as url:
            body = httpx.post(f"{url}/v1/search", json={"query": "paid leave", "k": 2}, timeout=60).json()
            w = body["watermark"]
            assert w["pending_changes"] == 1 and 39 <= w["oldest_pending_age_s"] <= 100
            assert abs(datetime.fromisoformat(w["searchable_through"].replace("Z", "+00:00")).timestamp()
                       - enqueued) < 0.01

            queue.done(queue.take(settings.collection))
            time.sleep(1.1)  # past the cache's second
            again = httpx.post(f"{url}/v1/search", json={"query": "paid leave", "k": 2}, timeout=60).json()
            assert again["cached"] and again["watermark"]["pending_changes"] == 0
            assert again["watermark"]["oldest_pending_age_s"] == 0
            through = datetime.fromisoformat(again["watermark"]["searchable_through"].replace("Z", "+00:00"))
            assert abs(through.timestamp() - time.time()) < 5  # nothing pending: searchable through now
    finally:
        queue.done(queue.take(settings.collection))
