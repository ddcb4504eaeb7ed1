"""The durable change queue on a real SQLite ledger database: latest change wins however deliveries are ordered,
versioned removal keeps a change that arrived mid-round, retries end in dead entries that a new change revives,
bounded rounds, stats and the watermark, and a state machine against a plain model."""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from millrace.events.queue import Change, ChangeQueue, entry_key

pytestmark = pytest.mark.unit
T0 = datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture()
def queue(tmp_path) -> ChangeQueue:
    return ChangeQueue(f"sqlite:///{tmp_path}/ledger.sqlite")


def change(obj: str = "a.pdf", collection: str = "c", **kw) -> Change:
    return Change(collection=collection, source="s3://bucket/docs", object=obj, **kw)


def test_the_latest_change_wins_by_sequencer_whatever_the_delivery_order(queue):
    assert queue.put([change(kind="created", sequencer="0055")]) == 1
    assert queue.put([change(kind="removed", sequencer="0077")]) == 1
    assert queue.put([change(kind="created", sequencer="0066")]) == 0  # older, delivered late: dropped
    e = queue.entry("c", "s3://bucket/docs", "a.pdf")
    assert (e.kind, e.sequencer, e.version) == ("removed", "0077", 2)
    # Sequencers of varying length compare right-padded (AWS's rule): 007701 is after 0077 (007700).
    assert queue.put([change(kind="created", sequencer="007701")]) == 1
    assert queue.put([change(kind="removed", sequencer="00770")]) == 0
    assert queue.entry("c", "s3://bucket/docs", "a.pdf").kind == "created"


def test_without_sequencers_event_time_then_arrival_decides(queue):
    queue.put([change(kind="created", event_time=T0 + timedelta(seconds=10))])
    assert queue.put([change(kind="removed", event_time=T0)]) == 0  # an earlier event arriving late
    assert queue.entry("c", "s3://bucket/docs", "a.pdf").kind == "created"
    assert queue.put([change(kind="removed", event_time=T0 + timedelta(seconds=20))]) == 1
    assert queue.put([change(kind="created")]) == 1  # nothing tells: the later arrival wins
    e = queue.entry("c", "s3://bucket/docs", "a.pdf")
    assert e.kind == "created" and e.version == 3


def test_a_redelivered_change_is_not_a_new_version(queue):
    queue.put([change(sequencer="00AB")])
    assert queue.put([change(sequencer="00ab")]) == 0  # SQS and the relay may both deliver one S3 event
    assert queue.entry("c", "s3://bucket/docs", "a.pdf").version == 1


def test_many_changes_to_one_object_are_one_entry_keeping_its_first_arrival(queue):
    queue.put([change(sequencer="01")], now=100.0)
    queue.put([change(sequencer="02")], now=200.0)
    queue.put([change("b.pdf", sequencer="01")], now=150.0)
    taken = queue.take("c", now=300.0)
    assert [e.object for e in taken] == ["a.pdf", "b.pdf"]  # oldest first: a.pdf has waited since 100
    assert taken[0].enqueued_at == 100.0 and taken[0].sequencer == "02"


def test_done_removes_only_the_taken_version(queue):
    queue.put([change("a.pdf"), change("b.pdf")])
    taken = queue.take("c")
    queue.put([change("a.pdf", kind="removed")])  # arrives while the round processes a.pdf
    assert queue.done(taken) == 1
    left = queue.take("c")
    assert [(e.object, e.kind) for e in left] == [("a.pdf", "removed")]
    assert queue.done(left) == 1 and queue.take("c") == [] and queue.stats("c").pending == 0


def test_a_crashed_round_leaves_everything_pending(queue):
    queue.put([change("a.pdf"), change("b.pdf")])
    assert len(queue.take("c")) == 2
    assert len(queue.take("c")) == 2  # nothing was done: the next round takes the same entries


def test_retries_wait_then_end_dead_and_a_new_change_revives(queue):
    queue.put([change()], now=100.0)
    e = queue.take("c", now=100.0)[0]
    assert queue.retry(e, "timeout", "tika took 60 s", next_attempt_at=200.0, max_attempts=2) is False
    assert queue.take("c", now=150.0) == []  # waiting for its retry
    s = queue.stats("c", now=150.0)
    assert (s.pending, s.due, s.dead) == (1, 0, 0)
    e = queue.take("c", now=200.0)[0]
    assert e.attempts == 1
    assert queue.retry(e, "timeout", "tika took 60 s again", next_attempt_at=300.0, max_attempts=2) is True
    assert queue.take("c", now=1000.0) == [] and queue.collections() == []
    dead = queue.entries("c", "dead")
    assert [(d.reason, d.detail, d.attempts) for d in dead] == [("timeout", "tika took 60 s again", 2)]
    s = queue.stats("c", now=1000.0)
    assert (s.pending, s.dead, s.watermark) == (0, 1, 1000.0)  # a dead change does not hold the watermark

    assert queue.put([change(sequencer="")], now=2000.0) == 1  # any new change to the object retries it
    e = queue.take("c", now=2000.0)[0]
    assert (e.state, e.attempts, e.reason, e.enqueued_at) == ("pending", 0, "", 2000.0)


def test_a_retry_of_a_superseded_version_does_not_touch_the_new_change(queue):
    queue.put([change()])
    e = queue.take("c")[0]
    queue.put([change(kind="removed")])
    assert queue.retry(e, "io", "x", next_attempt_at=1e12, max_attempts=1) is False
    fresh = queue.take("c")
    assert [(f.kind, f.attempts, f.state) for f in fresh] == [("removed", 0, "pending")]


def test_take_is_bounded_by_count_and_bytes_and_takes_at_least_one(queue):
    queue.put([change(f"{i}.pdf", size=400) for i in range(10)], now=100.0)
    assert len(queue.take("c", max_changes=3)) == 3
    assert len(queue.take("c", max_bytes=1000)) == 2
    assert len(queue.take("c", max_bytes=10)) == 1  # an object larger than a round still gets its round
    assert queue.take("other") == []


def test_stats_and_the_watermark(queue):
    s = queue.stats("c", now=50.0)
    assert (s.pending, s.oldest_enqueued_at, s.oldest_age_s, s.watermark) == (0, None, 0.0, 50.0)
    queue.put([change("a.pdf")], now=100.0)
    queue.put([change("b.pdf"), change("x.pdf", collection="d")], now=130.0)
    s = queue.stats("c", now=160.0)
    assert (s.pending, s.due, s.dead, s.oldest_enqueued_at, s.oldest_age_s, s.watermark) == \
        (2, 2, 0, 100.0, 60.0, 100.0)
    assert queue.collections() == ["c", "d"]
    queue.done([e for e in queue.take("c", now=160.0) if e.object == "a.pdf"])
    assert queue.stats("c", now=160.0).watermark == 130.0  # changes through 130 are searchable now


def test_round_totals(queue):
    assert queue.round_totals("c")["rounds"] == 0
    queue.record_round("c", "run-1", 10, 2.0, now=100.0)
    queue.record_round("c", "run-1", 4, 1.0, now=110.0)
    queue.record_round("d", "run-2", 7, 5.0, now=110.0)
    t = queue.round_totals("c")
    assert (t["rounds"], t["changes"], t["seconds"], t["last_changes"], t["last_seconds"], t["last_finished_at"]) \
        == (2, 14, 3.0, 4, 1.0, 110.0)


SEQUENCERS = st.one_of(st.just(""), st.integers(0, 6).map(lambda n: f"{n:04X}"))
CHANGES = st.builds(lambda obj, collection, seq, kind, t: change(
    obj, collection, sequencer=seq, kind=kind, event_time=None if t is None else T0 + timedelta(seconds=t)),
    st.sampled_from(["a.pdf", "sub dir/b c.pdf", "ç#+1.txt"]), st.sampled_from(["c", "d"]), SEQUENCERS,
    st.sampled_from(["created", "removed"]), st.one_of(st.none(), st.integers(0, 3)))


def _rows(queue: ChangeQueue) -> list[dict]:
    from sqlalchemy import select

    from millrace.events.queue import changes

    with queue.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(changes).order_by(changes.c.collection, changes.c.key)).mappings()]


@settings(max_examples=60, deadline=None)
@given(before=st.lists(CHANGES, max_size=5), dead=st.sets(st.sampled_from(["a.pdf", "ç#+1.txt"])),
       batch=st.lists(CHANGES, max_size=12))
def test_a_batch_is_stored_exactly_as_its_changes_put_one_at_a_time(before, dead, batch):
    """put() reads and writes a batch in a few statements (the relay's bursts); the outcome must be what putting the
    same changes one by one, in order, gives: accepted count and every column of every row, dead entries included
    (a change revives them), several changes of one object in one batch included."""
    folder = tempfile.mkdtemp()
    try:
        one, each = (ChangeQueue(f"sqlite:///{folder}/{name}/ledger.sqlite") for name in ("batch", "single"))
        for q in (one, each):
            q.put(before, now=100.0)
            for collection in ("c", "d"):
                for e in q.take(collection, 100):
                    if e.object in dead:
                        assert q.retry(e, "timeout", "slow", 0.0, max_attempts=1)
        assert one.put(batch, now=200.0) == sum(each.put([c], now=200.0) for c in batch)
        assert _rows(one) == _rows(each)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


KEYS = ["a", "b", "c"]


def accepts(new: str, stored: str) -> bool:
    """The model's rule: a later or unorderable sequencer wins, a redelivery (the same one) does not; sequencers
    here have one width."""
    return not new or (new != stored and (not stored or new > stored))


class QueueMachine(RuleBasedStateMachine):
    """Any interleaving of put, take, done and retry: the queue holds what a dict of latest versions holds."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.queue = ChangeQueue(f"sqlite:///{self.dir}/ledger.sqlite")
        self.model: dict[str, dict] = {}  # key -> sequencer, version, state, attempts
        self.rounds: list[list] = []

    def teardown(self):
        self.queue.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(key=st.sampled_from(KEYS), seq=st.one_of(st.just(""), st.integers(0, 8).map(lambda n: f"{n:04X}")))
    def put(self, key, seq):
        self.queue.put([change(key, sequencer=seq)])
        m = self.model.get(key)
        if m is None:
            self.model[key] = {"sequencer": seq, "version": 1, "state": "pending", "attempts": 0}
        elif m["state"] == "dead" or accepts(seq, m["sequencer"]):
            revive = m["state"] == "dead"
            m.update(sequencer=seq, version=m["version"] + 1, state="pending",
                     attempts=0 if revive else m["attempts"])

    @rule(n=st.integers(1, 3), skip=st.sets(st.sampled_from(KEYS)))
    def take(self, n, skip):
        # `exclude`: the keys of a round still committing, which the next round passes over.
        taken = self.queue.take("c", max_changes=n, exclude={entry_key("s3://bucket/docs", k) for k in skip})
        pending = sorted(k for k, m in self.model.items() if m["state"] == "pending" and k not in skip)
        assert len(taken) == min(n, len(pending)) and not {e.object for e in taken} & skip
        for e in taken:
            assert self.model[e.object]["version"] == e.version and e.sequencer == self.model[e.object]["sequencer"]
        if taken:
            self.rounds.append(taken)

    @rule(data=st.data())
    def done(self, data):
        if not self.rounds:
            return
        taken = self.rounds.pop(data.draw(st.integers(0, len(self.rounds) - 1)))
        removed = self.queue.done(taken)
        expect = 0
        for e in taken:
            m = self.model.get(e.object)
            if m is not None and m["version"] == e.version:
                del self.model[e.object]
                expect += 1
        assert removed == expect

    @rule(data=st.data())
    def retry(self, data):
        if not self.rounds:
            return
        round_ = self.rounds[data.draw(st.integers(0, len(self.rounds) - 1))]
        e = round_[data.draw(st.integers(0, len(round_) - 1))]
        died = self.queue.retry(e, "io", "", next_attempt_at=0.0, max_attempts=2)
        m = self.model.get(e.object)
        hit = m is not None and m["version"] == e.version
        if hit:
            m.update(attempts=e.attempts + 1, state="dead" if e.attempts + 1 >= 2 else "pending")
        assert died == (hit and m["state"] == "dead")

    @invariant()
    def the_queue_holds_the_model(self):
        for state in ("pending", "dead"):
            held = {e.object: (e.version, e.sequencer, e.attempts) for e in self.queue.entries("c", state)}
            assert held == {k: (m["version"], m["sequencer"], m["attempts"]) for k, m in self.model.items()
                            if m["state"] == state}
        s = self.queue.stats("c")
        assert (s.pending, s.dead) == (sum(m["state"] == "pending" for m in self.model.values()),
                                       sum(m["state"] == "dead" for m in self.model.values()))


QueueMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_the_queue_matches_a_model_under_any_interleaving = QueueMachine.TestCase
