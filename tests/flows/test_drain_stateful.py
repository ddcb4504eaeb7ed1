"""The continuous path as a state machine: random creates, overwrites and deletes in an S3 bucket (moto), their
notifications delivered late, twice or out of order, wake-ups lost (no drain after a delivery), and draining runs
SIGKILLed mid-round (a real process, killed from outside while its round's ledger run is open). Whenever the stream
goes quiet and a drain has run to the end, the queue is empty and Milvus equals a clean ingest of the bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import HealthCheck, settings as hsettings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from sqlalchemy import select

from flows.drain import drain
from flows.ingest import ingest
from millrace import clients
from millrace.config import load_settings
from millrace.events.queue import from_s3
from millrace.events.s3 import S3Change
from millrace.index import versions
from millrace.ledger.book import runs
from millrace.uris import s3_uri

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = st.sampled_from(["a report.txt", "café #2.txt", "b+c.txt", "sub dir/d.txt", "sub dir/é f.md", "x/y/z.txt"])
DRAIN = "from flows.drain import drain; import sys; drain(collection=sys.argv[1], options={'drain_idle_s': 30})"


def text(n: int) -> str:
    return (f"Version {n} of the log: {n * 37 % 101} eels passed fish ladder {n % 13} while gauge {n * 7 % 31} "
            f"read high at the {['upper', 'lower', 'middle'][n % 3]} weir.")


def mirror(settings) -> tuple[set, int]:
    """(doc_id, content hash, chunk count) of every indexed document, and the chunks Milvus holds for them."""
    rows = clients.ledger(settings).rows(versions.active_physical(settings), ["indexed"])
    ids = clients.milvus_store(settings).chunk_ids([r["doc_id"] for r in rows]) if rows else {}
    assert all(len(ids.get(r["doc_id"], ())) == r["chunks"] for r in rows), "Milvus and the ledger disagree"
    return {(r["doc_id"], r["content_hash"], r["chunks"]) for r in rows}, clients.milvus_store(settings).count()


class DrainMachine(RuleBasedStateMachine):
    s3 = None
    env: dict = {}
    kills = mid_round = 0

    @initialize()
    def setup(self):
        self.bucket = f"drain-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.s = load_settings(collection=f"d_{uuid.uuid4().hex[:8]}")
        self.queue = clients.change_queue(self.s)
        self.n = 0
        self.present: dict[str, str] = {}
        self.undelivered: list[S3Change] = []
        self.delivered: list[S3Change] = []

    def _event(self, key: str, kind: str) -> None:
        self.n += 1
        self.undelivered.append(S3Change(bucket=self.bucket, key=key, kind=kind, sequencer=f"{self.n:016X}",
                                         message_id=f"m{self.n}"))

    @rule(key=NAME)
    def upload(self, key):
        self.present[key] = text(self.n + 1)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=self.present[key].encode())
        self._event(key, "created")

    @precondition(lambda self: self.present)
    @rule(data=st.data())
    def delete(self, data):
        key = data.draw(st.sampled_from(sorted(self.present)))
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        del self.present[key]
        self._event(key, "removed")

    @precondition(lambda self: self.undelivered or self.delivered)
    @rule(data=st.data())
    def deliver(self, data):
        """Some of the pending notifications, in any order, some of them a second time."""
        batch = data.draw(st.lists(st.sampled_from(self.undelivered), unique_by=lambda c: c.message_id)) \
            if self.undelivered else []
        again = data.draw(st.lists(st.sampled_from(self.delivered), max_size=2)) if self.delivered else []
        order = data.draw(st.permutations(batch + again))
        self.queue.put(from_s3(self.s.collection, order, [], "test"))
        self.delivered += batch
        self.undelivered = [c for c in self.undelivered if c not in batch]

    @rule()
    def drain_to_the_end(self):
        drain(collection=self.s.collection, options={"drain_idle_s": 0})
        # Every object whose notifications all arrived is mirrored now; the others may lag, never more.
        settled = {c.key for c in self.delivered} - {c.key for c in self.undelivered}
        indexed = {r["source_uri"] for r in clients.ledger(self.s).rows(self.s.collection, ["indexed"])}
        assert {k for k in settled if s3_uri(self.bucket, k) in indexed} == {k for k in settled if k in self.present}

    @precondition(lambda self: self.undelivered or self.queue.stats(self.s.collection).pending)
    @rule(delay=st.floats(0.0, 1.5))
    def kill_a_drain_mid_round(self, delay):
        """Everything so far delivered, a draining process started, and SIGKILLed once its round has opened."""
        self.queue.put(from_s3(self.s.collection, self.undelivered, [], "test"))
        self.delivered += self.undelivered
        self.undelivered = []
        ledger = clients.ledger(self.s)
        proc = subprocess.Popen([sys.executable, "-c", DRAIN, self.s.collection], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline, opened = time.monotonic() + 120, None
            while time.monotonic() < deadline and proc.poll() is None:
                with ledger.engine.connect() as conn:
                    opened = conn.execute(select(runs.c.run_id).where(runs.c.collection.startswith(
                        self.s.collection), runs.c.state == "running")).first()
                if opened:
                    break
                time.sleep(0.05)
            time.sleep(delay)
            DrainMachine.kills += 1
            DrainMachine.mid_round += proc.poll() is None and opened is not None
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def teardown(self):
        if not hasattr(self, "s"):
            return
        # The stream goes quiet: every notification arrives (one lost wake-up's worth of them included), a drain
        # runs to the end, and the index must equal a clean ingest of the bucket.
        self.queue.put(from_s3(self.s.collection, self.undelivered, [], "test"))
        drain(collection=self.s.collection, options={"drain_idle_s": 0})
        assert self.queue.stats(self.s.collection).pending == 0
        clean = self.s.model_copy(update={"collection": f"clean_{uuid.uuid4().hex[:8]}"})
        if self.present:
            ingest(source=f"s3://{self.bucket}", collection=clean.collection)
        got, want = mirror(self.s), mirror(clean) if self.present else (set(), 0)
        assert got[0] == want[0], json.dumps({"extra": sorted(map(list, got[0] - want[0])),
                                              "missing": sorted(map(list, want[0] - got[0]))})
        assert got[1] == want[1]


def test_the_index_mirrors_the_bucket_under_random_deliveries_lost_wake_ups_and_killed_drains(
        s3_env, settings, milvus_server, monkeypatch):
    monkeypatch.setenv("MILLRACE_MILVUS_URI", milvus_server)
    DrainMachine.s3 = s3_env
    DrainMachine.env = {**os.environ}
    # Derandomized: CI runs the same interleavings every time, and they include kills mid-round.
    DrainMachine.TestCase.settings = hsettings(max_examples=4, stateful_step_count=12, deadline=None, derandomize=True,
                                               suppress_health_check=list(HealthCheck))
    DrainMachine.TestCase().runTest()
    assert DrainMachine.mid_round >= 1, f"no drain was killed mid-round ({DrainMachine.kills} kills)"
