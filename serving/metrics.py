"""Prometheus metrics of the API, in a registry per app (tests and benchmarks build several apps in one process).

Latency per stage (embed, search, generate, time to first token), cache hits, errors by kind, ingestion's metrics
(millrace.observe.metrics), and the index's
freshness read from the ledger at scrape time: the last ingest's finish time and the upload-to-searchable times the
ingest runs record per document (millrace.ledger.book documents.fresh_s)."""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from millrace.observe.metrics import IngestCollector

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, freshness: Callable[[], dict[str, float]] | None = None, ledger: Callable | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage = Histogram("millrace_stage_seconds", "Latency of one serving stage",
                               ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.requests = Histogram("millrace_request_seconds", "Whole request latency by route and status",
                                  ["route", "status"], buckets=STAGE_BUCKETS, registry=r)
        self.cache = Counter("millrace_cache_lookups_total", "Cache lookups", ["cache", "result"], registry=r)
        self.errors = Counter("millrace_errors_total", "Errors answered, by kind", ["kind"], registry=r)
        self.embed_batch = Histogram("millrace_embed_batch_size", "Queries per embedding forward pass",
                                     buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        if freshness is not None:
            r.register(_Freshness(freshness))
        if ledger is not None:  # ingestion's metrics too (millrace.observe.metrics): one scrape target suffices
            r.register(IngestCollector(ledger))

    def observe(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)


class _Freshness:
    """Gauges computed from the ledger when Prometheus scrapes, so they are never stale."""

    def __init__(self, read: Callable[[], dict[str, float]]):
        self.read = read

    def describe(self):
        return []

    def collect(self):
        try:
            values = self.read()
        except Exception:  # the ledger unreachable: no freshness gauges this scrape, the rest still served
            return
        for name, help_text in (("last_ingest_timestamp_seconds", "When the last ingest run of the serving "
                                 "collection finished"),
                                ("index_age_seconds", "Seconds since the last ingest run finished"),
                                ("upload_to_searchable_p50_seconds", "Median upload-to-searchable time of the "
                                 "recently indexed documents"),
                                ("upload_to_searchable_p95_seconds", "95th percentile of the same"),
                                ("indexed_documents", "Documents indexed in the serving collection")):
            if name in values:
                g = GaugeMetricFamily(f"millrace_{name}", help_text)
                g.add_metric([], values[name])
                yield g


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.marks: dict[str, float] = {}

    def mark(self, stage: str, since: float | None = None) -> float:
        now = time.perf_counter()
        elapsed = now - (since if since is not None else self.t0)
        self.marks[stage] = round(elapsed * 1000, 3)
        return elapsed
