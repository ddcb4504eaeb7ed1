"""The change queue's Prometheus metrics, scraped from the ingest collector over a real SQLite ledger."""

from __future__ import annotations

import time

import pytest
from prometheus_client import generate_latest

from millrace.events.queue import ROUND_RETENTION_S, Change, ChangeQueue
from millrace.ledger.book import Ledger, runs
from millrace.observe.metrics import registry

pytestmark = pytest.mark.unit


@pytest.fixture()
def ledger_and_queue(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    return Ledger(url), ChangeQueue(url)


def test_queue_depth_age_dead_and_drain_rounds_per_collection(ledger_and_queue):
    ledger, queue = ledger_and_queue
    now = time.time()
    queue.put([Change(collection="c", source="s3://b/", object=f"{i}.pdf") for i in range(3)], now=now - 90)
    queue.put([Change(collection="c", source="s3://b/", object="late.pdf")], now=now - 10)
    dead = queue.take("c", max_changes=1)[0]
    queue.retry(dead, "timeout", "tika took too long", next_attempt_at=0.0, max_attempts=1)
    queue.record_round("c", "run-1", 10, 2.0)
    queue.record_round("c", "run-1", 4, 0.5)
    reg = registry(lambda: ledger)

    def value(name: str, collection: str = "c") -> float | None:
        return reg.get_sample_value(name, {"collection": collection})

    assert value("millrace_queue_pending") == 3 and value("millrace_queue_due") == 3
    assert value("millrace_queue_dead") == 1
    assert 85 <= value("millrace_queue_oldest_pending_age_seconds") <= 120  # the SLO signal
    assert value("millrace_drain_changes_total") == 14 and value("millrace_drain_rounds_total") == 2
    assert value("millrace_drain_seconds_total") == 2.5
    assert value("millrace_drain_last_round_changes") == 4 and value("millrace_drain_last_round_seconds") == 0.5
    assert b"millrace_queue_oldest_pending_age_seconds{collection=\"c\"}" in generate_latest(reg)

    # The counters never go down when a week-old round row is pruned (Prometheus would read a reset).
    queue.record_round("c", "run-2", 1, 0.1, now=time.time() + ROUND_RETENTION_S + 3600)
    assert queue.round_totals("c")["rounds"] == 1
    assert value("millrace_drain_changes_total") == 15 and value("millrace_drain_rounds_total") == 3

    # Drained: the age falls to 0 and the collection stays reported (a gauge that vanishes would hide the drop).
    while taken := queue.take("c"):
        queue.done(taken)
    assert value("millrace_queue_pending") == 0 and value("millrace_queue_oldest_pending_age_seconds") == 0.0
    assert value("millrace_queue_dead") == 1


def test_a_collection_known_to_the_ledger_but_never_queued_reports_zeros(ledger_and_queue):
    ledger, _ = ledger_and_queue
    with ledger.engine.begin() as conn:  # a finished ingest run of the collection, as the ingest flow records it
        conn.execute(runs.insert().values(collection="known", source="s3://b/", finished_at=time.time(),
                                          reconciled=1, milvus_count=0, ledger_count=0, state="done"))
    reg = registry(lambda: ledger)
    for name in ("millrace_queue_pending", "millrace_queue_oldest_pending_age_seconds",
                 "millrace_drain_changes_total", "millrace_drain_rounds_total"):
        assert reg.get_sample_value(name, {"collection": "known"}) == 0, name

