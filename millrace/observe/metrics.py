"""Prometheus metrics of ingestion, read from the ledger when Prometheus scrapes.

Ingest runs are batch jobs (a flow process, Dask workers) that are gone before a scrape could reach them, and a
Pushgateway would keep only the last push per run. The ledger already holds what happened (every finished run's
summary, every document's state, failure reason and upload-to-searchable time), so a collector turns it into
metrics at scrape time: `millrace serve` exposes them next to the serving metrics, and `millrace metrics` serves them
alone for a platform without the API. Any number of processes reading one ledger report the same values (dashboards
use max by (collection)).

Counters (documents, chunks, stage seconds, runs) are sums over finished runs; the collector adds each run once,
remembering the last run row it summed, so a scrape costs the new runs only. The change queue's depth and age and its
drain's rounds (millrace.events.queue_metrics) come with them, for the collections known here and those with pending
changes."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select

from millrace.documents.records import DocState
from millrace.events.queue_metrics import QueueMetrics
from millrace.ledger.book import Ledger, documents, runs

log = logging.getLogger("millrace.metrics")
OUTCOMES = ("indexed", "failed", "quarantined", "deleted")


class IngestCollector:
    def __init__(self, ledger: Callable[[], Ledger]):
        self.ledger = ledger
        self._lock = threading.Lock()
        self._after = 0  # every finished run up to this runs.id is summed
        self._seen: set[int] = set()  # runs above it that are summed
        self._docs: dict[tuple[str, str], float] = defaultdict(float)
        self._chunks: dict[str, float] = defaultdict(float)
        self._stages: dict[tuple[str, str], float] = defaultdict(float)
        self._runs: dict[tuple[str, str], float] = defaultdict(float)
        self._queue = QueueMetrics()

    def describe(self) -> list:
        return []  # metrics come and go with the ledger's collections: no fixed description

    def collect(self) -> Iterator[Metric]:
        try:
            ledger = self.ledger()
            with self._lock:
                self._sum_new_runs(ledger)
                yield from self._counters()
            known = {c for c, _ in self._runs} | {c for c, _ in self._docs}
            yield from self._gauges(ledger, known)
            with self._lock:
                yield from self._queue.collect(ledger, known)
        except Exception as exc:  # the ledger unreachable: the scrape keeps its other metrics
            log.warning("ingest metrics not read from the ledger: %s", exc)

    def _sum_new_runs(self, ledger: Ledger) -> None:
        """Add the runs finished since the last scrape. Runs finish out of id order (concurrent collections), so the
        floor stays below the oldest run still open, and the ids above it already summed are remembered; a run open
        for over a day (its process killed) no longer holds the floor."""
        with ledger.engine.connect() as conn:
            rows = list(conn.execute(select(runs.c.id, runs.c.collection, runs.c.state, runs.c.summary).where(
                runs.c.id > self._after, runs.c.state.in_(("done", "failed"))).order_by(runs.c.id)))
            oldest_open = conn.execute(select(func.min(runs.c.id)).where(
                runs.c.id > self._after, runs.c.state.in_(("running", "committing")),
                runs.c.started_at > time.time() - 86400)).scalar()
        for row in rows:
            if row.id in self._seen:
                continue
            self._seen.add(row.id)
            self._runs[(row.collection, row.state)] += 1
            s = json.loads(row.summary or "{}")
            for outcome in OUTCOMES:
                self._docs[(row.collection, outcome)] += s.get(outcome, 0) or 0
            self._chunks[row.collection] += s.get("chunks_written", 0) or 0
            for stage, seconds in (s.get("stage_seconds") or {}).items():
                self._stages[(row.collection, stage)] += seconds
            for phase, seconds in (s.get("phase_seconds") or {}).items():
                self._stages[(row.collection, f"run:{phase}")] += seconds
        top = max((r.id for r in rows), default=self._after)
        self._after = top if oldest_open is None else max(self._after, oldest_open - 1)
        self._seen = {i for i in self._seen if i > self._after}

    def _counters(self) -> Iterator[Metric]:
        docs = CounterMetricFamily("millrace_ingest_documents", "Documents processed by finished ingest runs, by "
                                   "outcome", labels=["collection", "outcome"])
        for (collection, outcome), n in sorted(self._docs.items()):
            docs.add_metric([collection, outcome], n)
        chunks = CounterMetricFamily("millrace_ingest_chunks", "Chunks written to Milvus by finished ingest runs",
                                     labels=["collection"])
        for collection, n in sorted(self._chunks.items()):
            chunks.add_metric([collection], n)
        stages = CounterMetricFamily("millrace_ingest_stage_seconds", "Seconds spent per ingest stage (read, "
                                     "extract, chunk, quality, embed: summed over batches; write; run:<phase>: "
                                     "wall time of the run's phases)", labels=["collection", "stage"])
        for (collection, stage), seconds in sorted(self._stages.items()):
            stages.add_metric([collection, stage], seconds)
        ran = CounterMetricFamily("millrace_ingest_runs", "Ingest runs finished, by final state",
                                  labels=["collection", "state"])
        for (collection, state), n in sorted(self._runs.items()):
            ran.add_metric([collection, state], n)
        yield from (docs, chunks, stages, ran)

    def _gauges(self, ledger: Ledger, known: set[str]) -> Iterator[Metric]:
        """Adds the collections the ledger holds documents of to `known`."""
        with ledger.engine.connect() as conn:
            states = list(conn.execute(select(documents.c.collection, documents.c.state, func.count())
                                       .group_by(documents.c.collection, documents.c.state)))
            failing = list(conn.execute(
                select(documents.c.collection, documents.c.stage, documents.c.reason, func.count())
                .where(documents.c.state.in_((DocState.failed.value, DocState.quarantined.value)))
                .group_by(documents.c.collection, documents.c.stage, documents.c.reason)))
            last = list(conn.execute(select(runs.c.collection, func.max(runs.c.finished_at))
                                     .where(runs.c.state == "done").group_by(runs.c.collection)))
        by_state = GaugeMetricFamily("millrace_ingest_ledger_documents", "Documents in the ledger by state",
                                     labels=["collection", "state"])
        for collection, state, n in states:
            by_state.add_metric([collection, state], n)
            known.add(collection)
        failures = GaugeMetricFamily("millrace_ingest_failing_documents", "Documents whose latest version failed "
                                     "or was quarantined, by stage and reason", labels=["collection", "stage",
                                                                                       "reason"])
        for collection, stage, reason, n in failing:
            failures.add_metric([collection, stage or "unknown", reason or "unknown"], n)
        finished = GaugeMetricFamily("millrace_ingest_last_run_timestamp_seconds", "When the collection's last "
                                     "ingest run finished", labels=["collection"])
        age = GaugeMetricFamily("millrace_ingest_index_age_seconds", "Seconds since the collection's last ingest "
                                "run finished", labels=["collection"])
        fresh = GaugeMetricFamily("millrace_ingest_upload_to_searchable_seconds", "Upload-to-searchable time of "
                                  "the recently indexed documents", labels=["collection", "quantile"])
        now = time.time()
        for collection, at in last:
            finished.add_metric([collection], at)
            age.add_metric([collection], max(0.0, now - at))
            f = ledger.freshness(collection)
            for q in ("50", "95"):
                if f"upload_to_searchable_p{q}_seconds" in f:
                    fresh.add_metric([collection, f"0.{q}"], f[f"upload_to_searchable_p{q}_seconds"])
        yield from (by_state, failures, finished, age, fresh)


def registry(ledger: Callable[[], Ledger]) -> CollectorRegistry:
    """A registry holding only the ingest collector (the standalone exporter's)."""
    r = CollectorRegistry()
    r.register(IngestCollector(ledger))
    return r


def serve_metrics(ledger: Callable[[], Ledger], host: str, port: int) -> None:
    """The exporter: /metrics on host:port until interrupted."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry(ledger))
    try:
        thread.join()
    finally:
        server.shutdown()
