"""The relay's grouped writes (intake.relay_writes): whatever mix of copies, concurrent deliveries and failed queue
writes arrives, each delivery is queued once, a refused one is not remembered (its redelivery is queued), and the
queue holds each object's latest acknowledged change. Real SQLite ledger database; the failing queue is a test
double of ChangeQueue whose put raises, as a locked or full database does."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intake.relay_writes import DeliveryWriter
from millrace.events.log import EventLog
from millrace.events.queue import ChangeQueue, from_s3
from millrace.events.s3 import S3Change

pytestmark = pytest.mark.unit
KEYS = ["in box/café #1.txt", "a+b = c 100%.md", "Übersicht Mai (v2).pdf", "日本語/メモ.txt"]


class FlakyQueue(ChangeQueue):
    """A ChangeQueue whose next `failures` puts raise, as a locked database does."""

    failures = 0

    def put(self, batch, now=None):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is locked")
        return super().put(batch, now)


deliveries = st.lists(st.tuples(st.integers(0, 5), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
                                st.booleans()), min_size=1, max_size=12)
waves = st.lists(st.tuples(deliveries, st.integers(0, 2)), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(waves=waves)
def test_grouped_deliveries_are_queued_once_and_the_latest_acknowledged_change_wins(waves):
    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'ledger.sqlite'}"
    queue, eventlog, notified = FlakyQueue(url), EventLog(url), []
    writer = DeliveryWriter(queue, eventlog, notified.extend)
    acknowledged: dict[str, tuple] = {}  # message id -> its changes, once a copy got 200
    queued_ids: list[str] = []
    seq = 0

    async def run() -> None:
        nonlocal seq
        for wave, failures in waves:
            queue.failures = failures
            sent = []
            for number, keys, removed in wave:
                message_id = f"msg-{number}"
                # A copy carries the same changes as the original; a fresh id gets fresh, later changes.
                if message_id not in acknowledged:
                    seq += 1
                    changes = [S3Change(bucket="b", key=k, kind="removed" if removed else "created",
                                        sequencer=f"{seq:08d}", message_id=message_id, index=i)
                               for i, k in enumerate(keys)]
                else:
                    changes = acknowledged[message_id]
                sent.append((message_id, changes))
            outcomes = await asyncio.gather(*(writer.deliver(m, [(c, q) for c in changes for q in
                                                                 from_s3("col", [c], ["s3://b"], "relay")])
                                              for m, changes in sent))
            for (message_id, changes), (code, body, first) in zip(sent, outcomes):
                assert code in (200, 503)
                if code == 200:
                    acknowledged.setdefault(message_id, changes)
                    if body["status"] == "queued" and first:
                        queued_ids.append(message_id)

    asyncio.run(run())
    assert sorted(queued_ids) == sorted(set(queued_ids)) == sorted(acknowledged)
    assert eventlog.seen_many(list(acknowledged)) == set(acknowledged)
    latest: dict[str, S3Change] = {}
    for changes in acknowledged.values():
        for c in changes:
            if c.key not in latest or c.sequencer > latest[c.key].sequencer:
                latest[c.key] = c
    entries = queue.take("col", 10_000)
    assert {(e.object, e.kind, e.sequencer) for e in entries} == {(k, c.kind, c.sequencer) for k, c in latest.items()}
    assert sorted(c.sequencer for c in notified) == sorted(c.sequencer for cs in acknowledged.values() for c in cs)
