"""The `ingest` flow: mirror a folder or S3 prefix into a Milvus collection."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed

from flows.runner import dask_task_runner
from millrace import pipeline
from millrace.config import Settings, load_settings
from millrace.ledger import Ledger
from millrace.records import BatchResult
from tasks.ingest import _store, embedding_dim, list_source, process_batch, write_batch


@flow(name="ingest", flow_run_name="ingest {source}", task_runner=dask_task_runner(), log_prints=False)
def ingest(source: str, collection: str | None = None, retry_failed: bool = False,
           options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Extract, chunk, embed and upsert the new or changed documents of a source; drop the deleted ones."""
    overrides = {**(options or {}), **({"collection": collection} if collection else {})}
    settings = load_settings(**overrides)
    return run_ingest(source, settings, retry_failed)


def run_ingest(source: str, settings: Settings, retry_failed: bool = False) -> dict[str, Any]:
    log = get_run_logger()
    started = time.perf_counter()
    version = pipeline.pipeline_version(settings)
    ledger = Ledger(settings.ledger_url)
    objects = list_source(source, settings)
    src_uri = _source_uri(source, objects)
    plan = pipeline.plan_run(objects, src_uri, ledger, settings.collection, version, retry_failed)
    log.info("%d documents at %s: %d to process, %d unchanged, %d gone", len(objects), source, len(plan.todo),
             len(plan.skipped), len(plan.gone))

    on_server = not settings.milvus_is_lite
    store = _store(settings)
    if plan.todo:
        store.ensure_collection(embedding_dim.submit(settings).result())
    batches = pipeline.make_batches(plan.todo, settings.docs_per_batch)
    futures = process_batch.map(list(range(1, len(batches) + 1)), batches, unmapped(source), unmapped(settings),
                                write=unmapped(on_server))
    totals = {"indexed": 0, "failed": 0, "chunks_written": 0}
    stages: dict[str, float] = {}
    failures = []
    for future in as_completed(futures):
        result: BatchResult = future.result()
        batch_no = futures.index(future) + 1
        # Lite allows one process, this one: workers return vectors and the flow writes them.
        written = len(result.chunks) if on_server else write_batch(batch_no, result, settings)
        pipeline.record_batch(ledger, settings.collection, result, version)
        totals["indexed"] += len(result.documents)
        totals["failed"] += len(result.failures)
        totals["chunks_written"] += written
        failures.extend(result.failures)
        for stage, seconds in result.stage_seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds

    deleted = pipeline.remove_gone(store, ledger, settings.collection, plan.gone) if store.exists() else 0
    seconds = time.perf_counter() - started
    summary = {
        "source": source, "collection": settings.collection, "seen": plan.seen, "processed": len(plan.todo),
        "skipped": len(plan.skipped), "deleted": deleted, **totals, "seconds": round(seconds, 3),
        "docs_per_s": round(len(plan.todo) / seconds, 3) if seconds else 0.0,
        "chunks_per_s": round(totals["chunks_written"] / seconds, 3) if seconds else 0.0,
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
        "collection_count": store.count() if store.exists() else 0,
        "ledger_chunks": ledger.chunk_total(settings.collection),
        "failures": [f.model_dump() for f in failures],
    }
    summary["reconciled"] = summary["collection_count"] == summary["ledger_chunks"]
    if not summary["reconciled"]:
        log.error("reconciliation mismatch: Milvus holds %d chunks, the ledger expects %d",
                  summary["collection_count"], summary["ledger_chunks"])
    create_markdown_artifact(key=f"ingest-{_artifact_key(settings.collection)}", markdown=_report(summary),
                             description=f"ingest of {source}")
    return summary


def _source_uri(source: str, objects) -> str:
    if source.startswith("s3://"):
        return source.rstrip("/")
    from pathlib import Path

    return Path(source.removeprefix("file://")).expanduser().resolve().as_uri()


def _artifact_key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())


def _report(s: dict[str, Any]) -> str:
    lines = [f"# Ingest of `{s['source']}` into `{s['collection']}`", "",
             "| seen | processed | indexed | skipped | failed | deleted | chunks written | seconds | docs/s | chunks/s |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| {s['seen']} | {s['processed']} | {s['indexed']} | {s['skipped']} | {s['failed']} | {s['deleted']} | "
             f"{s['chunks_written']} | {s['seconds']} | {s['docs_per_s']} | {s['chunks_per_s']} |", "",
             f"Stage seconds (summed over workers): {s['stage_seconds']}", "",
             f"Reconciliation: Milvus count(*) {s['collection_count']} vs ledger {s['ledger_chunks']} — "
             f"{'OK' if s['reconciled'] else 'MISMATCH'}", ""]
    if s["failures"]:
        lines += ["## Failed documents", "", "| source | stage | reason | detail |", "|---|---|---|---|"]
        lines += [f"| {f['source_uri']} | {f['stage']} | {f['reason']} | {f['detail'][:120].replace('|', '/')} |"
                  for f in s["failures"]]
    return "\n".join(lines)
