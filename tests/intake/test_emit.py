"""The relay's events and their pacing: a lone change wakes at once, a burst costs a few flushes, nobody waits for a
flush, and the events of a flush (object events for the feed, one wake-up naming the collection) in bounded POSTs."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intake import emit
from intake.emit import WAKE_EVENT, Debouncer, PrefectEmitter, flush_events, posts, wake_event
from millrace.events.s3 import S3Change

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 21, 10, tzinfo=timezone.utc)


def change(key: str, bucket: str = "docs", kind: str = "created", seq: str = "", message_id: str = "m",
           index: int = 0) -> S3Change:
    return S3Change(bucket=bucket, key=key, kind=kind, sequencer=seq, message_id=message_id, index=index,
                    event_time=T0)


class Recorder:
    """A flush that records what it was given and when, optionally failing or taking its time."""

    def __init__(self, fail: Exception | None = None, delay: float = 0.0):
        self.flushes: list[tuple[str, list[str], float]] = []
        self.fail, self.delay = fail, delay

    async def __call__(self, bucket: str, changes: list[S3Change]) -> None:
        self.flushes.append((bucket, [c.key for c in changes], asyncio.get_running_loop().time()))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail


async def settle(debouncer: Debouncer, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while debouncer.pending or any(b.task for b in debouncer._buckets.values()):
        assert loop.time() < deadline, "the debouncer did not settle"
        await asyncio.sleep(0.01)


def run(coro):
    return asyncio.run(coro)


def test_a_lone_change_flushes_at_once_and_a_burst_costs_a_few_spaced_flushes():
    async def main():
        flush = Recorder(delay=0.05)
        debouncer = Debouncer(flush, debounce_s=0.2, max_wait_s=5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        debouncer.add([change("k0")])  # returns at once: nobody waits for a flush
        assert loop.time() - start < 0.01
        for i in range(1, 20):
            await asyncio.sleep(0.02)
            debouncer.add([change(f"k{i}", message_id=f"m{i}")])
        await settle(debouncer)
        assert flush.flushes[0][1] == ["k0"] and flush.flushes[0][2] - start < 0.05  # the leading edge
        assert 2 <= len(flush.flushes) <= 3, flush.flushes
        assert sorted(k for f in flush.flushes for k in f[1]) == sorted(f"k{i}" for i in range(20))
        times = [f[2] for f in flush.flushes]
        assert all(b - a >= 0.2 - 0.01 for a, b in zip(times, times[1:]))  # at most one flush per debounce_s

        await asyncio.sleep(0.3)  # quiet again: the next change is a new leading edge
        again = loop.time()
        debouncer.add([change("late")])
        await settle(debouncer)
        assert flush.flushes[-1][1] == ["late"] and flush.flushes[-1][2] - again < 0.05

    run(main())


def test_max_wait_bounds_a_steady_trickle_and_max_keys_cuts_a_flood():
    async def main():
        flush = Recorder()
        debouncer = Debouncer(flush, debounce_s=0.15, max_wait_s=0.4)
        for i in range(20):  # never 0.15 s quiet for a whole second
            debouncer.add([change(f"t{i}")])
            await asyncio.sleep(0.05)
        await settle(debouncer)
        assert 3 <= len(flush.flushes) <= 5 and sum(len(f[1]) for f in flush.flushes) == 20
        times = [f[2] for f in flush.flushes]
        assert all(b - a <= 0.4 + 0.15 for a, b in zip(times[1:], times[2:]))  # max_wait, not the quiet period

        flood = Recorder()
        debouncer = Debouncer(flood, debounce_s=10, max_wait_s=10, max_keys=4)
        debouncer.add([change(f"f{i}") for i in range(9)])
        await asyncio.sleep(0.3)
        assert [len(f[1]) for f in flood.flushes] == [4, 4] and debouncer.pending == 1  # full batches do not wait
        await debouncer.close()

    run(main())


def test_buckets_flush_separately_and_one_bucket_flushes_in_order():
    async def main():
        flush = Recorder(delay=0.1)
        debouncer = Debouncer(flush, debounce_s=0.05, max_wait_s=1)
        debouncer.add([change("a", bucket="one"), change("b", bucket="two")])
        await settle(debouncer)
        assert sorted(f[0] for f in flush.flushes) == ["one", "two"]
        assert abs(flush.flushes[0][2] - flush.flushes[1][2]) < 0.05  # neither bucket waits for the other

        ordered = Recorder(delay=0.2)
        debouncer = Debouncer(ordered, debounce_s=0.02, max_wait_s=1)
        debouncer.add([change("x", kind="created")])
        await asyncio.sleep(0.1)  # the first flush is running; the next one waits for it
        debouncer.add([change("x", kind="removed")])
        await settle(debouncer)
        assert len(ordered.flushes) == 2 and ordered.flushes[1][2] - ordered.flushes[0][2] >= 0.19

    run(main())


def test_a_failed_flush_holds_nobody_up_and_the_next_one_still_runs():
    async def main():
        failing = Recorder(fail=RuntimeError("prefect down"), delay=0.05)
        debouncer = Debouncer(failing, debounce_s=0.05)
        debouncer.add([change("a")])
        await settle(debouncer)
        debouncer.add([change("b")])
        await settle(debouncer)
        assert [f[1] for f in failing.flushes] == [["a"], ["b"]]

        slow = Recorder(delay=10)
        debouncer = Debouncer(slow, debounce_s=0.05)
        debouncer.add([change("c")])
        await asyncio.sleep(0.05)
        await asyncio.wait_for(debouncer.close(), 1)  # shutting down does not wait for a hung emit

    run(main())


def test_a_flush_has_the_wake_up_and_one_event_per_object():
    changes = [change("a b.txt", seq="01", message_id="m1"),
               change("a b.txt", kind="removed", seq="02", message_id="m2"),
               change("Übersicht Mai.docx", message_id="m2", index=1), change("elsewhere", bucket="other")]
    wake, *objects = flush_events("team docs", "docs", changes, now=T0 + timedelta(seconds=5))
    assert wake["event"] == WAKE_EVENT == "millrace.changes.pending"
    assert wake["resource"] == {"prefect.resource.id": "millrace.collection.team docs",
                                "prefect.resource.name": "team docs"}
    assert wake["related"] == [{"prefect.resource.id": "s3.bucket.docs", "prefect.resource.name": "docs",
                                "prefect.resource.role": "bucket"}]
    assert wake["payload"] == {"collection": "team docs", "changes": 2}
    assert [(e["event"], e["payload"]["key"]) for e in objects] == [
        ("s3.object.removed", "a b.txt"), ("s3.object.created", "Übersicht Mai.docx")]  # the latest per key
    assert objects[0]["id"] == str(changes[1].event_id) and objects[0]["occurred"] == T0.isoformat()
    assert objects[0]["resource"] == {"prefect.resource.id": "s3.bucket.docs", "prefect.resource.name": "docs"}
    assert objects[0]["related"] == [{"prefect.resource.id": "s3.object.docs/a b.txt",
                                      "prefect.resource.role": "object", "prefect.resource.name": "a b.txt"}]
    again = flush_events("team docs", "docs", list(reversed(changes)), now=T0)
    assert sorted(e["id"] for e in again[1:]) == sorted(e["id"] for e in objects)  # a redelivery: the same ids
    assert again[0]["id"] != wake["id"]  # but every wake-up is its own
    lone = wake_event("c", 3, now=T0)
    assert lone["related"] == [] and lone["payload"] == {"collection": "c", "changes": 3}
    assert lone["occurred"] == T0.isoformat() and uuid.UUID(lone["id"])


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=60, unique=True), st.integers(300, 3000))
@settings(max_examples=60, deadline=None)
def test_posts_are_bounded_and_lose_nothing(keys, limit):
    events = flush_events("c", "docs", [change(k, message_id="m", index=i) for i, k in enumerate(keys)], now=T0)
    bodies = posts(events, limit)
    assert [e for b in bodies for e in b] == events
    assert all(len(b) == 1 or len(json.dumps(b)) <= limit for b in bodies)


def test_the_emitter_sends_a_large_flush_in_bounded_posts(monkeypatch):
    class Sink(BaseHTTPRequestHandler):
        bodies: list[bytes] = []

        def do_POST(self):
            type(self).bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(emit, "MAX_POST_BYTES", 20_000)
    emitter = PrefectEmitter(f"http://127.0.0.1:{server.server_address[1]}/api", retry_delays=[])
    try:
        events = flush_events("c", "docs", [change(f"dir/{i:04} ünïcode.txt", message_id="m", index=i)
                                            for i in range(300)])
        emitter.emit(events)
    finally:
        emitter.close()
        server.shutdown()
    assert len(Sink.bodies) > 1 and all(len(b) <= 20_000 for b in Sink.bodies)
    assert [e["id"] for b in Sink.bodies for e in json.loads(b)] == [e["id"] for e in events]
