"""The `ingest` flow: mirror a folder or S3 prefix into a Milvus collection, provably."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
# Prefect walks every element of a direct task call's arguments looking for futures; a batch of vectors is ~10^5
# floats. quote() skips that walk (submitted tasks get their arguments unwrapped only in-process, so not there).
from prefect.utilities.annotations import quote

from flows.report import ingest_report, quality_report
from flows.runner import dask_task_runner
from millrace import pipeline
from millrace.config import Settings, load_settings
from millrace.ledger import Ledger
from millrace.quality import QualityGateError
from millrace.records import BatchResult, SourceObject
from millrace.store import MilvusStore
from tasks.ingest import milvus_store, embedding_dim, list_source, process_batch, write_batch


class ReconciliationError(RuntimeError):
    """Milvus and the ledger disagree after a run: the index is not a mirror of the source."""


@flow(name="ingest", flow_run_name="ingest {source}")
def ingest(source: str, collection: str | None = None, retry_failed: bool = False,
           options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Index new and changed documents of a source, drop deleted ones, and reconcile Milvus with the ledger."""
    overrides = {**(options or {}), **({"collection": collection} if collection else {})}
    return run_ingest(source, load_settings(**overrides), retry_failed)


def run_ingest(source: str, settings: Settings, retry_failed: bool = False) -> dict[str, Any]:
    log = get_run_logger()
    started = time.perf_counter()
    version = pipeline.pipeline_version(settings)
    ledger = Ledger(settings.resolved_ledger_url)
    objects = list_source(source, settings)  # called, not submitted: listing runs here, no cluster needed
    plan = pipeline.plan_run(objects, _source_uri(source), ledger, settings.collection, version, retry_failed)
    log.info("%d documents at %s: %d to process, %d unchanged, %d gone", len(objects), source, len(plan.todo),
             len(plan.skipped), len(plan.gone))
    store = milvus_store(settings)
    phases: dict[str, float] = {"plan": time.perf_counter() - started}
    results = _process(source, plan, settings, store, version, ledger, phases) if plan.todo else []

    t = time.perf_counter()
    deleted = pipeline.remove_gone(store, ledger, settings.collection, plan.gone)
    touched = {o.doc_id for o in plan.todo} | {r["doc_id"] for r in plan.gone}
    check = pipeline.reconcile(store, ledger, settings.collection, touched)
    phases["reconcile"] = time.perf_counter() - t
    seconds = time.perf_counter() - started
    summary = _summary(source, settings, plan, results, deleted, seconds, check)
    summary["phase_seconds"] = {k: round(v, 3) for k, v in phases.items()}
    ledger.record_run(settings.collection, source, check, {k: v for k, v in summary.items() if k != "failures"})
    create_markdown_artifact(key=f"ingest-{_key(settings.collection)}", markdown=ingest_report(summary),
                             description=f"ingest of {source}")
    if not check["ok"]:
        raise ReconciliationError(
            f"Milvus holds {check['milvus_count']} chunks of {settings.collection}, the ledger expects "
            f"{check['ledger_count']}; documents off: {check['mismatched_docs'][:5]}. Re-run the ingest to converge")
    return summary


def _process(source: str, plan: pipeline.Plan, settings: Settings, store: MilvusStore, version: str,
             ledger: Ledger, phases: dict[str, float]) -> list[BatchResult]:
    """Fan batches out to Dask (a cluster is started only now that there is work), gate, then write."""
    t = time.perf_counter()
    with dask_task_runner(settings) as runner:
        store.ensure_collection(runner.submit(embedding_dim, {"settings": settings}).result())
        slots = sum(runner.client.nthreads().values()) or 1
        phases["start_workers"] = time.perf_counter() - t
        t = time.perf_counter()
        per_batch = pipeline.batch_size_for(len(plan.todo), settings.docs_per_batch, slots)
        batches = pipeline.make_batches(plan.todo, per_batch)
        futures = [runner.submit(process_batch, {"batch_no": i, "objects": batch, "source": source,
                                                 "settings": settings, "reuse": _reuse(store, plan, batch)})
                   for i, batch in enumerate(batches, start=1)]
        results = [f.result() for f in futures]
        phases["process"] = time.perf_counter() - t
        _gate(results, settings)
        t = time.perf_counter()
        # One read of what the index holds for these documents, instead of one per batch.
        existing = store.chunk_ids({o.doc_id for o in plan.todo})
        # Lite allows one process, this one: it writes. A server takes writes from the workers.
        if settings.milvus_is_lite:
            for i, result in enumerate(results, start=1):
                write_batch(i, quote(result), settings, _subset(existing, result))
                pipeline.record_batch(ledger, settings.collection, result, version)
        else:
            writes = [runner.submit(write_batch, {"batch_no": i, "result": r, "settings": settings,
                                                  "existing": _subset(existing, r)})
                      for i, r in enumerate(results, start=1)]
            for result, done in zip(results, writes):
                done.result()
                pipeline.record_batch(ledger, settings.collection, result, version)
        phases["write"] = time.perf_counter() - t
    return results


def _subset(existing: dict[str, set[str]], result: BatchResult) -> dict[str, set[str]]:
    docs = {d.doc_id for d in result.documents} | {f.doc_id for f in result.failures}
    return {doc: ids for doc, ids in existing.items() if doc in docs}


def _reuse(store: MilvusStore, plan: pipeline.Plan, batch: list[SourceObject]) -> dict[str, list[float]]:
    ids = [o.doc_id for o in batch if o.doc_id in plan.reusable]
    return store.vectors_by_hash(ids) if ids else {}


def _gate(results: list[BatchResult], settings: Settings) -> None:
    processed = sum(len(r.documents) + len(r.failures) for r in results)
    quarantined = sum(1 for r in results for f in r.failures if f.stage == "quality")
    create_markdown_artifact(key="quality-gates", markdown=quality_report(results, processed, quarantined),
                             description="Great Expectations results of this run's batches")
    if processed and quarantined / processed > settings.max_quarantined_fraction:
        raise QualityGateError(
            f"{quarantined} of {processed} documents failed the quality gates (limit "
            f"{settings.max_quarantined_fraction:.0%}); nothing was written. See the quality-gates artifact")


def _summary(source, settings, plan, results, deleted, seconds, check) -> dict[str, Any]:
    failures = [f for r in results for f in r.failures]
    stages: dict[str, float] = {}
    for r in results:
        for stage, s in r.stage_seconds.items():
            stages[stage] = round(stages.get(stage, 0.0) + s, 3)
    written = sum(len(r.chunks) for r in results)
    return {
        "source": source, "collection": settings.collection, "seen": plan.seen, "processed": len(plan.todo),
        "skipped": len(plan.skipped), "deleted": deleted, "indexed": sum(len(r.documents) for r in results),
        "failed": sum(1 for f in failures if f.stage != "quality"),
        "quarantined": sum(1 for f in failures if f.stage == "quality"), "chunks_written": written,
        "chunks_embedded": sum(r.embedded for r in results), "chunks_reused": sum(r.reused for r in results),
        "seconds": round(seconds, 3), "docs_per_s": round(len(plan.todo) / seconds, 3) if seconds else 0.0,
        "chunks_per_s": round(written / seconds, 3) if seconds else 0.0, "stage_seconds": stages,
        "collection_count": check["milvus_count"], "ledger_chunks": check["ledger_count"],
        "reconciled": check["ok"], "failures": [f.model_dump() for f in failures],
    }


def _source_uri(source: str) -> str:
    if source.startswith("s3://"):
        return source.rstrip("/")
    return Path(source.removeprefix("file://")).expanduser().resolve().as_uri()


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
