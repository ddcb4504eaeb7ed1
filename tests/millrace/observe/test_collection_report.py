"""`millrace status`'s change-queue section over a real SQLite ledger: depth, watermark, the drain's throughput,
whether a drain holds the lease, and every dead change with why."""

from __future__ import annotations

import json
import time

import pytest

from millrace import clients
from millrace.config import Settings
from millrace.events.queue import Change
from millrace.ledger.lease import Lease
from millrace.observe.collection_report import format_status, status_report

pytestmark = pytest.mark.unit


@pytest.fixture()
def settings(tmp_path):
    return Settings(home=tmp_path / "home", collection="status_c")


def test_status_shows_the_queue_the_drain_and_each_dead_change(settings):
    queue = clients.change_queue(settings)
    now = time.time()
    queue.put([Change(collection="status_c", source="s3://bucket/docs", object="broken.pdf", origin="sqs:m1")],
              now=now - 120)
    queue.put([Change(collection="status_c", source="s3://bucket/docs", object="waiting.pdf")], now=now - 30)
    broken = queue.take("status_c", max_changes=1)[0]
    queue.retry(broken, "unreachable", "s3 GetObject timed out after 3 tries", next_attempt_at=0.0, max_attempts=1)
    queue.record_round("status_c", "run-7", 12, 3.0)
    queue.record_round("status_c", "run-7", 3, 0.75)

    with Lease(clients.ledger(settings), "status_c", "run-7", "drain s3://bucket/docs", ttl_s=30):
        report = status_report(settings)
        text = format_status(report)

    q = report["queue"]
    assert (q["pending"], q["due"], q["dead"]) == (1, 1, 1)
    assert 25 <= q["oldest_pending_age_s"] <= 60 and q["watermark"].endswith("Z")
    assert q["draining_now"] and q["draining_run"] == "run-7"
    assert q["drained"] == {**q["drained"], "rounds": 2, "changes": 15, "changes_per_round": 7.5,
                            "last_round_changes": 3, "last_round_seconds": 0.75}
    [dead_entry] = q["dead_entries"]
    assert dead_entry == {"source": "s3://bucket/docs", "object": "broken.pdf", "kind": "created",
                          "reason": "unreachable", "detail": "s3 GetObject timed out after 3 tries", "attempts": 1,
                          "origin": "sqs:m1", "enqueued_at": dead_entry["enqueued_at"]}
    assert dead_entry["enqueued_at"].endswith("Z")
    json.dumps(report)  # `millrace status --json`

    lines = text.splitlines()
    assert any(line.startswith("queue: 1 pending (1 due), 1 dead; oldest pending") and "draining now (run run-7)"
               in line and f"searchable through {q['watermark']}" in line for line in lines), text
    assert any("15 changes in 2 rounds" in line and "last round 3 changes in 0.75s" in line for line in lines), text
    dead = [line for line in lines if line.strip().startswith("dead")]
    assert len(dead) == 1 and "s3://bucket/docs/broken.pdf" in dead[0] and "unreachable" in dead[0] \
        and "timed out" in dead[0] and "1 attempts" in dead[0], text


def test_status_without_a_drain_and_an_empty_queue(settings):
    report = status_report(settings)
    q = report["queue"]
    assert (q["pending"], q["dead"], q["draining_now"], q["dead_entries"]) == (0, 0, False, [])
    assert q["drained"]["rounds"] == 0 and q["drained"]["changes_per_round"] is None
    assert "queue: 0 pending (0 due), 0 dead" in format_status(report) and "no drain running" in format_status(report)
