"""The `ingest` flow: mirror a folder, record file or S3 prefix (or named objects in it) into a Milvus collection."""

from __future__ import annotations

import resource
import sys
import time
import uuid
from collections import deque
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
# Prefect walks every element of a direct task call's arguments looking for futures; a batch of vectors is ~10^5
# floats. quote() skips that walk.
from prefect.utilities.annotations import quote

from blocks import load_settings
from flows.report import RunStats, ingest_report, quality_report
from flows.runner import dask_task_runner
from millrace import clients, pipeline, staging
from millrace import plan as planning
from millrace.config import Settings
from millrace.embed import model_id
from millrace.lease import Lease
from millrace.quality import QualityGateError
from millrace.sources import canonical_source_uri
from tasks.ingest import commit_run, embedding_dim, list_source, process_batch, rollback_run, write_batch


class ReconciliationError(RuntimeError):
    """Milvus and the ledger disagree after a run: the index is not a mirror of the source."""


@flow(name="ingest", flow_run_name="ingest {source}")
def ingest(source: str, collection: str | None = None, retry_failed: bool = False, objects: list[str] | None = None,
           options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Index new and changed documents of a source, drop deleted ones, and reconcile Milvus with the ledger."""
    overrides = {**(options or {}), **({"collection": collection} if collection else {})}
    return run_ingest(source, load_settings(**overrides), retry_failed, objects)


def run_ingest(source: str, settings: Settings, retry_failed: bool = False,
               objects: list[str] | None = None) -> dict[str, Any]:
    log = get_run_logger()
    started = time.perf_counter()
    run_id = str(flow_run.get_id() or uuid.uuid4())
    ledger, collection = clients.ledger(settings), settings.collection
    scope = planning.Scope(source=canonical_source_uri(source), include=settings.include, exclude=settings.exclude,
                           objects=None if objects is None else sorted({o.strip("/") for o in objects}))
    lease = Lease(ledger, collection, run_id, f"ingest of {scope.describe()}", settings.lease_ttl_s,
                  settings.lease_wait_s, on_wait=log.warning)
    with lease:
        ledger.start_run(collection, run_id, source, scope.model_dump())
        store = clients.milvus_store(settings)
        recovered = staging.recover(store, ledger, collection, run_id)
        phases: dict[str, float] = {"wait_for_lease": lease.waited_s}
        t = time.perf_counter()
        version = pipeline.pipeline_version(settings)
        # Listed into the ledger and classified there, page by page: memory does not grow with the source.
        list_source(source, settings, run_id, scope)  # called, not submitted: listing runs here, no cluster needed
        plan = planning.classify(ledger, collection, run_id, version, retry_failed)
        log.info("%d documents in %s: %d to process, %d unchanged, %d waiting to retry", plan.seen,
                 scope.describe(), plan.todo, plan.skipped, plan.waiting)
        phases["plan"] = time.perf_counter() - t
        stats = RunStats()
        try:
            if plan.todo:
                _process(source, plan, settings, run_id, version, lease, stats, phases)
            t = time.perf_counter()
            commit_run(run_id, settings)
        except BaseException:
            # Undo this run's additions now; if that fails too, the next run's recovery does it. A run that lost
            # its lease leaves them to the new holder, whose recovery may already be at work on them.
            if not lease.lost.is_set():
                rollback_run(run_id, settings)
                ledger.set_run_state(run_id, "failed")
            planning.forget_listing(ledger, run_id)
            raise
        finally:
            create_markdown_artifact(key="quality-gates", markdown=quality_report(stats),
                                     description="Great Expectations results of this run's batches")
        for gone in planning.gone_pages(ledger, collection, run_id, scope):
            plan.gone += pipeline.remove_gone(store, ledger, collection, gone, run_id)
        planning.forget_listing(ledger, run_id)
        check = pipeline.reconcile(store, ledger, collection, run_id)
        phases["commit"] = time.perf_counter() - t
        summary = stats.summary(source, collection, plan, time.perf_counter() - started, check)
        summary.update(scope=scope.model_dump(), run_id=run_id, recovered=recovered,
                       phase_seconds={k: round(v, 3) for k, v in phases.items()}, peak_rss_mb=peak_rss_mb())
        ledger.record_run(collection, source, check, {k: v for k, v in summary.items() if k != "failures"}, run_id,
                          scope.model_dump())
    create_markdown_artifact(key=f"ingest-{_key(collection)}", markdown=ingest_report(summary),
                             description=f"ingest of {scope.describe()}")
    if not check["ok"]:
        raise ReconciliationError(
            f"Milvus holds {check['milvus_count']} chunks of {collection}, the ledger expects "
            f"{check['ledger_count']}; documents off: {check['mismatched_docs'][:5]}. Re-run the ingest to converge")
    return summary


def _process(source: str, plan: planning.Plan, settings: Settings, run_id: str, version: str, lease: Lease,
             stats: RunStats, phases: dict[str, float]) -> None:
    """Fan batches out to Dask and stage each one as it finishes, a bounded number in flight.

    Only `window` batch results exist at once (in the workers or here), so memory does not grow with the run.
    The quarantine limit is exact while streaming: the run's document count is known from the classified listing,
    and a run whose quarantined documents pass limit x count stops and rolls back at once."""
    log = get_run_logger()
    store, ledger = clients.milvus_store(settings), clients.ledger(settings)
    t = time.perf_counter()
    with dask_task_runner(settings) as runner:
        store.ensure_collection(runner.submit(embedding_dim, {"settings": settings}).result(), model_id(settings))
        slots = sum(runner.client.nthreads().values()) or 1
        phases["start_workers"] = time.perf_counter() - t
        t = time.perf_counter()
        per_batch = pipeline.batch_size_for(plan.todo, settings.docs_per_batch, slots)
        total, allowed = -(-plan.todo // per_batch), settings.max_quarantined_fraction * plan.todo
        batches = enumerate((b for page in planning.todo_pages(ledger, settings.collection, plan)
                             for b in pipeline.make_batches(page, per_batch)), start=1)
        in_flight: deque = deque()

        def submit_next() -> None:
            if (nxt := next(batches, None)) is not None:
                i, batch = nxt
                reuse = store.vectors_by_hash([o.doc_id for o in batch if o.doc_id in plan.reusable])
                in_flight.append((i, runner.submit(process_batch, {
                    "batch_no": i, "batches": max(i, total), "objects": batch, "source": source,
                    "settings": settings, "reuse": reuse})))

        for _ in range(max(2, 2 * slots)):
            submit_next()
        while in_flight:
            i, future = in_flight.popleft()
            result = future.result()
            del future
            submit_next()
            stats.add(result)
            if stats.quarantined > allowed:
                raise QualityGateError(
                    f"{stats.quarantined} of {plan.todo} documents failed the quality gates (limit "
                    f"{settings.max_quarantined_fraction:.0%}); the run stopped and rolled back, nothing was "
                    "changed. See the quality-gates artifact")
            lease.check()
            stats.chunks_written += write_batch(i, max(i, total), quote(result), settings, run_id, version)
            del result
            log.info("batch %d/%d staged: %d documents indexed, %d failed, %d quarantined so far", i, total,
                     stats.indexed, stats.failed, stats.quarantined)
        phases["process_and_write"] = time.perf_counter() - t


def peak_rss_mb() -> float:
    """This process's peak resident memory (the flow's, not the workers')."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
