"""Prometheus metrics of the change queue and its draining runs, read from the ledger's database at scrape time
(the ingest collector, millrace.observe.metrics, calls it so that both scrape targets expose them).

The age of the oldest pending change is the freshness SLO signal: a change is searchable once its entry is gone.

The drain counters are summed from the `drain_rounds` rows, each row once, rather than taken from
`ChangeQueue.round_totals`: those totals cover the rows kept (a week), so they shrink as old rows are pruned, and a
counter that goes down reads as a reset to Prometheus (a spike in rate())."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import select

from millrace.events.queue import ChangeQueue, rounds
from millrace.ledger.book import Ledger

# Round rows finished this long ago are certainly committed: the floor below which no row can still appear (ids of
# concurrent collections' rounds may commit out of order on a server database).
SETTLED_S = 300.0


def queue_of(ledger: Ledger) -> ChangeQueue:
    """The queue beside the ledger (same database; one engine per URL in a process)."""
    return ChangeQueue(ledger.engine.url.render_as_string(hide_password=False))


class QueueMetrics:
    """Not thread-safe: the ingest collector calls it under its lock."""

    def __init__(self) -> None:
        self._after = 0  # every round row up to this id is summed
        self._seen: set[int] = set()  # rows above it that are summed
        self._changes: dict[str, float] = defaultdict(float)
        self._rounds: dict[str, float] = defaultdict(float)
        self._seconds: dict[str, float] = defaultdict(float)

    def _sum_new_rounds(self, queue: ChangeQueue, now: float) -> None:
        with queue.engine.connect() as conn:
            rows = list(conn.execute(select(rounds.c.id, rounds.c.collection, rounds.c.changes, rounds.c.seconds,
                                            rounds.c.finished_at).where(rounds.c.id > self._after)
                                     .order_by(rounds.c.id)))
        for row in rows:
            if row.id in self._seen:
                continue
            self._seen.add(row.id)
            self._changes[row.collection] += row.changes
            self._rounds[row.collection] += 1
            self._seconds[row.collection] += row.seconds
        settled = [r.id for r in rows if r.finished_at < now - SETTLED_S]
        self._after = max([self._after, *settled])
        self._seen = {i for i in self._seen if i > self._after}

    def collect(self, ledger: Ledger, known: Iterable[str]) -> Iterator[Metric]:
        """Per collection: those the ingest collector knows and those with pending changes."""
        queue, now = queue_of(ledger), time.time()
        self._sum_new_rounds(queue, now)
        names = sorted(set(known) | set(queue.collections()) | set(self._rounds))
        pending = GaugeMetricFamily("millrace_queue_pending", "Changes waiting in the collection's change queue "
                                    "(not yet searchable), retries included", labels=["collection"])
        due = GaugeMetricFamily("millrace_queue_due", "Pending changes not waiting for a retry",
                                labels=["collection"])
        dead = GaugeMetricFamily("millrace_queue_dead", "Changes set aside after their retries ran out (`millrace "
                                 "status` shows why)", labels=["collection"])
        age = GaugeMetricFamily("millrace_queue_oldest_pending_age_seconds", "Seconds since the oldest pending "
                                "change arrived: how far search lags behind the sources (0 when none is pending)",
                                labels=["collection"])
        changes = CounterMetricFamily("millrace_drain_changes", "Changes taken by the draining runs' rounds",
                                      labels=["collection"])
        rounds_ = CounterMetricFamily("millrace_drain_rounds", "Rounds drained from the change queue",
                                      labels=["collection"])
        seconds = CounterMetricFamily("millrace_drain_seconds", "Seconds the drained rounds took",
                                      labels=["collection"])
        last_n = GaugeMetricFamily("millrace_drain_last_round_changes", "Changes in the collection's last drained "
                                   "round", labels=["collection"])
        last_s = GaugeMetricFamily("millrace_drain_last_round_seconds", "Seconds the collection's last drained "
                                   "round took", labels=["collection"])
        last_at = GaugeMetricFamily("millrace_drain_last_round_timestamp_seconds", "When the collection's last "
                                    "drained round finished", labels=["collection"])
        for name in names:
            s = queue.stats(name, now=now)
            pending.add_metric([name], s.pending)
            due.add_metric([name], s.due)
            dead.add_metric([name], s.dead)
            age.add_metric([name], s.oldest_age_s)
            changes.add_metric([name], self._changes.get(name, 0.0))
            rounds_.add_metric([name], self._rounds.get(name, 0.0))
            seconds.add_metric([name], self._seconds.get(name, 0.0))
            totals = queue.round_totals(name)
            if totals["rounds"]:
                last_n.add_metric([name], totals["last_changes"])
                last_s.add_metric([name], totals["last_seconds"])
                last_at.add_metric([name], totals["last_finished_at"])
        yield from (pending, due, dead, age, changes, rounds_, seconds, last_n, last_s, last_at)
