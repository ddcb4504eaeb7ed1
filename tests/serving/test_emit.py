"""Batches of S3 changes: debouncing per bucket, acknowledgement only after the flush, and the events of a batch."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millrace.s3events import S3Change
from serving import emit
from serving.emit import BATCH_EVENT, Debouncer, build_batches

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 21, 10, tzinfo=timezone.utc)


def change(key: str, bucket: str = "docs", kind: str = "created", seq: str = "", message_id: str = "m",
           index: int = 0) -> S3Change:
    return S3Change(bucket=bucket, key=key, kind=kind, sequencer=seq, message_id=message_id, index=index,
                    event_time=T0)


class Recorder:
    """A flush that records what it was given, optionally failing or taking its time."""

    def __init__(self, fail: Exception | None = None, delay: float = 0.0):
        self.flushes: list[tuple[str, list[str], float]] = []
        self.fail, self.delay = fail, delay

    async def __call__(self, bucket: str, changes: list[S3Change]) -> str:
        await asyncio.sleep(self.delay)
        self.flushes.append((bucket, [c.key for c in changes], asyncio.get_running_loop().time()))
        if self.fail:
            raise self.fail
        return f"{bucket}:{len(self.flushes)}"


def run(coro):
    return asyncio.run(coro)


def test_a_burst_becomes_one_flush_answered_after_it():
    async def main():
        flush = Recorder(delay=0.05)
        debouncer = Debouncer(flush, debounce_s=0.2, max_wait_s=5)
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def request(i: int):
            await asyncio.sleep(i * 0.02)
            result = await debouncer.submit([change(f"k{i}", message_id=f"m{i}")])
            return result, loop.time()

        answers = await asyncio.gather(*(request(i) for i in range(10)))
        assert len(flush.flushes) == 1 and sorted(flush.flushes[0][1]) == sorted(f"k{i}" for i in range(10))
        flushed_at = flush.flushes[0][2]
        assert all(result == ["docs:1"] and at >= flushed_at for result, at in answers)  # ack after emit
        assert flushed_at - start >= 0.2 + 9 * 0.02  # quiet period after the last change
        assert debouncer.pending == 0

    run(main())


def test_max_wait_bounds_a_steady_trickle_and_max_keys_cuts_a_flood():
    async def main():
        flush = Recorder()
        debouncer = Debouncer(flush, debounce_s=0.15, max_wait_s=0.4)

        async def trickle(i: int):
            await asyncio.sleep(i * 0.05)
            return await debouncer.submit([change(f"t{i}")])

        await asyncio.gather(*(trickle(i) for i in range(20)))  # never 0.15 s quiet for a whole second
        assert 2 <= len(flush.flushes) <= 4 and sum(len(f[1]) for f in flush.flushes) == 20

        flood = Recorder()
        debouncer = Debouncer(flood, debounce_s=10, max_wait_s=10, max_keys=4)
        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(debouncer.submit([change(f"f{i}")]) for i in range(8)))
        assert [len(f[1]) for f in flood.flushes] == [4, 4]
        assert asyncio.get_running_loop().time() - started < 1  # full batches do not wait

        big = Recorder()
        debouncer = Debouncer(big, debounce_s=0.05, max_keys=3)
        results = await debouncer.submit([change(f"b{i}") for i in range(7)])  # one request, three batches
        assert [len(f[1]) for f in big.flushes] == [3, 3, 1] and results == ["docs:1", "docs:2", "docs:3"]

    run(main())


def test_buckets_flush_separately_and_one_bucket_flushes_in_order():
    async def main():
        flush = Recorder(delay=0.1)
        debouncer = Debouncer(flush, debounce_s=0.05, max_wait_s=1)
        both = await debouncer.submit([change("a", bucket="one"), change("b", bucket="two")])
        assert sorted(both) == ["one:1", "two:2"] or sorted(both) == ["one:2", "two:1"]
        assert sorted(f[0] for f in flush.flushes) == ["one", "two"]

        ordered = Recorder(delay=0.2)
        debouncer = Debouncer(ordered, debounce_s=0.02, max_wait_s=1)
        first = asyncio.create_task(debouncer.submit([change("x", kind="created")]))
        await asyncio.sleep(0.1)  # the first batch is flushing now; this one must wait for it
        await debouncer.submit([change("x", kind="removed")])
        await first
        assert [f[2] for f in ordered.flushes] == sorted(f[2] for f in ordered.flushes)
        assert ordered.flushes[1][2] - ordered.flushes[0][2] >= 0.19

    run(main())


def test_a_failed_flush_fails_every_request_in_it():
    async def main():
        debouncer = Debouncer(Recorder(fail=RuntimeError("prefect down")), debounce_s=0.05)
        results = await asyncio.gather(*(debouncer.submit([change(f"k{i}")]) for i in range(3)),
                                       return_exceptions=True)
        assert [str(r) for r in results] == ["prefect down"] * 3

    run(main())


def test_a_batch_has_one_event_per_object_and_one_batch_event():
    changes = [change("a b.txt", seq="01", message_id="m1"), change("a b.txt", kind="removed", seq="02",
                                                                     message_id="m2"),
               change("Übersicht Mai.docx", message_id="m2", index=1), change("elsewhere", bucket="other")]
    [batch] = build_batches("docs", changes, now=T0 + timedelta(seconds=5))
    *objects, summary = batch.events
    assert [(e["event"], e["payload"]["key"]) for e in objects] == [
        ("s3.object.removed", "a b.txt"), ("s3.object.created", "Übersicht Mai.docx")]  # the latest per key
    assert objects[0]["id"] == str(changes[1].event_id) and objects[0]["occurred"] == T0.isoformat()
    assert objects[0]["resource"] == {"prefect.resource.id": "s3.bucket.docs", "prefect.resource.name": "docs"}
    assert objects[0]["related"] == [{"prefect.resource.id": "s3.object.docs/a b.txt",
                                      "prefect.resource.role": "object", "prefect.resource.name": "a b.txt"}]
    assert summary["event"] == BATCH_EVENT and summary["resource"]["prefect.resource.id"] == "s3.bucket.docs"
    assert summary["payload"] == {"bucket": "docs", "created": ["Übersicht Mai.docx"], "removed": ["a b.txt"],
                                  "batch_id": batch.batch_id, "count": 2}
    assert all(e["payload"]["batch_id"] == batch.batch_id for e in objects)
    again = build_batches("docs", list(reversed(changes)), now=T0)[0]
    assert again.batch_id == batch.batch_id  # the same deliveries give the same ids
    assert sorted(e["id"] for e in again.events) == sorted(e["id"] for e in batch.events)
    uuid.UUID(batch.batch_id)


@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=60, unique=True), st.integers(40, 400))
@settings(max_examples=60, deadline=None)
def test_a_batch_too_big_for_one_event_is_split_without_losing_a_key(keys, limit):
    original = emit.MAX_BATCH_KEY_BYTES
    emit.MAX_BATCH_KEY_BYTES = limit
    try:
        batches = build_batches("docs", [change(k, message_id="m", index=i) for i, k in enumerate(keys)], now=T0)
    finally:
        emit.MAX_BATCH_KEY_BYTES = original
    created = [k for b in batches for k in b.events[-1]["payload"]["created"]]
    assert created == keys
    for b in batches:
        payload = b.events[-1]["payload"]
        assert len(payload["created"]) == 1 or len(json.dumps(payload["created"])) <= limit + 2 * len(
            payload["created"])
    assert len({b.batch_id for b in batches}) == len(batches)
