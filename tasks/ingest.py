"""Ingestion tasks. `process-batch` runs on Dask workers; the others run in the flow's process.

No task retries: the I/O calls inside retry themselves (millrace.retry), once, with backoff, and only on errors that
can succeed next time. A task retry around them would multiply the attempts and retry data errors too."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from millrace import clients, pipeline, plan, staging
from millrace.config import Settings
from millrace.plan import Scope
from millrace.records import BatchResult, SourceObject


@task(name="list-source", task_run_name="list {source}", cache_policy=NO_CACHE)
def list_source(source: str, settings: Settings, run_id: str, scope: Scope) -> int:
    """List the documents at a folder, record file or S3 prefix into the ledger, with their fingerprints."""
    src = clients.source(source, settings)
    # Named objects (an S3 event batch) are looked up one by one, not found by listing the whole prefix.
    objects = src.named(scope.objects) if scope.objects is not None and hasattr(src, "named") else src.list()
    return plan.record_listing(clients.ledger(settings), run_id, objects, scope)


@task(name="process-batch", task_run_name="process batch {batch_no}/{batches}", cache_policy=NO_CACHE)
def process_batch(batch_no: int, batches: int, objects: list[SourceObject], source: str, settings: Settings,
                  reuse: dict | None = None) -> BatchResult:
    """Extract, chunk, quality-check and embed one batch of documents."""
    return pipeline.process_batch(objects, source, settings, reuse)


@task(name="write-batch", task_run_name="write batch {batch_no}/{batches}", cache_policy=NO_CACHE)
def write_batch(batch_no: int, batches: int, result: BatchResult, settings: Settings, run_id: str,
                version: str) -> int:
    """Stage a batch: record its outcome as pending, then add its chunks to Milvus next to the old versions."""
    backoff = (settings.transient_backoff_s, settings.transient_backoff_max_s)
    return staging.stage_batch(clients.milvus_store(settings), clients.ledger(settings), settings.collection,
                               run_id, result, version, backoff)


@task(name="commit-run", task_run_name="commit {run_id}", cache_policy=NO_CACHE)
def commit_run(run_id: str, settings: Settings) -> int:
    """Retire the old versions of the run's documents and commit their ledger rows."""
    return staging.commit(clients.milvus_store(settings), clients.ledger(settings), run_id)


@task(name="roll-back-run", task_run_name="roll back {run_id}", cache_policy=NO_CACHE)
def rollback_run(run_id: str, settings: Settings) -> int:
    """Remove what the run added, leaving the index as it was before the run."""
    return staging.rollback(clients.milvus_store(settings), clients.ledger(settings), run_id)
