"""Ingestion tasks. `process-batch` runs on Dask workers; the others run in the flow's process.

No task retries: the I/O calls inside retry themselves (millrace.retry), once, with backoff, and only on errors that
can succeed next time. A task retry around them would multiply the attempts and retry data errors too."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from millrace import clients, pipeline
from millrace.config import ConfigError, Settings, load_settings
from millrace.documents.records import BatchResult, SourceObject
from millrace.index import staging
from millrace.ledger import plan
from millrace.ledger.plan import Scope
from millrace.observe import logs, telemetry


def _set_up_flow_process() -> None:
    """Prefect starts a flow run's span before the flow's code runs, so the flow process (`millrace ingest`, a Prefect
    worker's flow run, which import this module through flows.ingest) installs its tracer provider on import. Dask
    workers import this module too, but their warm-up (millrace.platform.warmup) has set them up as millrace-worker first."""
    if telemetry.installed():  # a Dask worker, set up by its warm-up; keep its service name and trace folder
        return
    try:
        settings = load_settings()
        telemetry.setup("millrace-ingest", settings)
        logs.configure(settings)
    except (ConfigError, ValueError) as exc:  # bad MILLRACE_* values fail the run itself, with the real message
        logging.getLogger("millrace").warning("tracing not set up: %s", exc)


def _sent_trace() -> dict | None:
    """The trace context a batch was sent with (process-batch's `trace`), for Prefect's task span on the worker."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return (ctx.parameters or {}).get("trace") if ctx is not None else None


_set_up_flow_process()
telemetry.fallback_parent(_sent_trace)


@task(name="list-source", task_run_name="list {source}", cache_policy=NO_CACHE)
def list_source(source: str, settings: Settings, run_id: str, scope: Scope) -> int:
    """List the documents at a folder, record file or S3 prefix into the ledger, with their fingerprints."""
    telemetry.setup("millrace-ingest", settings)  # no-op but for the trace folder: this run's home
    telemetry.annotate(source=source, collection=settings.collection, run_id=run_id)
    src = clients.source(source, settings)
    # Named objects (an S3 event batch) are looked up one by one, not found by listing the whole prefix.
    objects = src.named(scope.objects) if scope.objects is not None and hasattr(src, "named") else src.list()
    return plan.record_listing(clients.ledger(settings), run_id, objects, scope)


@task(name="process-batch", task_run_name="process batch {batch_no}/{batches}", cache_policy=NO_CACHE)
def process_batch(batch_no: int, batches: int, objects: list[SourceObject], source: str, settings: Settings,
                  reuse: dict | None = None, trace: dict | None = None) -> BatchResult:
    """Extract, chunk, quality-check and embed one batch of documents."""
    # `trace`: the flow's trace context, for a worker where Prefect's own task span is off (see millrace.observe.telemetry).
    with telemetry.attached(trace), telemetry.run_scope(_run_id()):
        telemetry.annotate(batch=batch_no, batches=batches, documents=len(objects), collection=settings.collection)
        result = pipeline.process_batch(objects, source, settings, reuse)
        telemetry.annotate(chunks=len(result.chunks), failures=len(result.failures))
        return result


@task(name="write-batch", task_run_name="write batch {batch_no}/{batches}", cache_policy=NO_CACHE)
def write_batch(batch_no: int, batches: int, result: BatchResult, settings: Settings, run_id: str,
                version: str) -> int:
    """Stage a batch: record its outcome as pending, then add its chunks to Milvus next to the old versions."""
    backoff = (settings.transient_backoff_s, settings.transient_backoff_max_s)
    with telemetry.run_scope(run_id), telemetry.span("milvus.stage_batch", collection=settings.collection,
                                                     batch=batch_no, chunks=len(result.chunks)):
        return staging.stage_batch(clients.milvus_store(settings), clients.ledger(settings), settings.collection,
                                   run_id, result, version, backoff)


@task(name="commit-run", task_run_name="commit {run_id}", cache_policy=NO_CACHE)
def commit_run(run_id: str, settings: Settings) -> int:
    """Retire the old versions of the run's documents and commit their ledger rows."""
    with telemetry.run_scope(run_id), telemetry.span("milvus.commit", collection=settings.collection):
        return staging.commit(clients.milvus_store(settings), clients.ledger(settings), run_id)


@task(name="roll-back-run", task_run_name="roll back {run_id}", cache_policy=NO_CACHE)
def rollback_run(run_id: str, settings: Settings) -> int:
    """Remove what the run added, leaving the index as it was before the run."""
    with telemetry.run_scope(run_id), telemetry.span("milvus.rollback", collection=settings.collection):
        return staging.rollback(clients.milvus_store(settings), clients.ledger(settings), run_id)


def imported() -> bool:
    """Run on each Dask worker by the flow's warm-up (Client.run): unpickling it imports this module and Prefect's task
    machinery there, which the first batch on a worker would otherwise pay."""
    return True


def _run_id() -> str:
    return str(flow_run.get_id() or "")
