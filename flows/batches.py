"""A run's batches: where they run (this process, the run's own LocalCluster, or a standing Dask cluster), a bounded
window of them in flight, each staged as it finishes, and a poison document cornered by halving its batch."""

from __future__ import annotations

import functools
import itertools
import time
from collections import deque
from typing import Callable

from distributed import KilledWorker
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
# Prefect walks every element of a direct task call's arguments looking for futures; a batch of vectors is ~10^5
# floats. quote() skips that walk.
from prefect.utilities.annotations import quote

from flows.report import RunStats
from flows.runner import WarmCluster, dask_task_runner, keep_workers
from millrace import clients, pipeline
from millrace.config import Settings
from millrace.documents.embed import model_id
from millrace.documents.quality import QualityGateError
from millrace.documents.records import BatchResult, Failure, SourceObject
from millrace.ledger import plan as planning
from millrace.ledger.lease import Lease
from millrace.observe import telemetry
from millrace.platform.warmup import warm_up, warm_up_dim
from millrace.sources.jsonl import is_jsonl
from tasks.ingest import imported, process_batch, write_batch

# How often a wait for a batch looks for workers of the run's own cluster that are gone for good (flows.runner).
WORKERS_CHECK_S = 30.0


def process_batches(source: str, plan: planning.Plan, settings: Settings, run_id: str, version: str, lease: Lease,
             stats: RunStats, phases: dict[str, float], runner: WarmCluster | None = None,
             artifacts: bool = True, before_staging: Callable[[], None] | None = None) -> None:
    """Process the run's batches where they are cheapest, staging each one as it finishes, a bounded number in flight.

    A configured Dask cluster is always used (its workers are warm). Otherwise a small change set is processed in
    this process, which costs a model load but not a cluster start-up, and a large one on a LocalCluster. Only
    `window` batch results exist at once, so memory does not grow with the run. The quarantine limit is exact
    while streaming: a run whose quarantined documents pass limit x count stops and rolls back at once."""
    store = clients.milvus_store(settings)
    in_process = runner is None and not settings.dask_address and plan.todo <= settings.inprocess_max_docs
    t = time.perf_counter()
    if in_process:
        took = warm_up(settings, extractor=False)  # Tika starts with the first file that needs it (records don't)
        store.ensure_collection(clients.embedder(settings).dim, model_id(settings))
        phases["warm_up"] = time.perf_counter() - t
        get_run_logger().info("%d documents: processed in the flow's process (warm-up %s)", plan.todo,
                              ", ".join(f"{k} {v:.1f}s" for k, v in took.items()))
        _stream(source, plan, settings, run_id, version, lease, stats, phases, None, 1, artifacts, before_staging)
        return
    if runner is not None:  # a draining run's: started and warmed up once for all its rounds
        store.ensure_collection(runner.dim, model_id(settings))
        _stream(source, plan, settings, run_id, version, lease, stats, phases, runner.runner.submit, runner.slots,
                artifacts, before_staging, functools.partial(keep_workers, runner.runner), pipeline.round_batch_size)
        return
    with dask_task_runner(settings) as dask_runner:
        warm = warm_cluster(dask_runner, settings, extractor=not is_jsonl(source))  # records need no Tika
        phases["start_workers"] = time.perf_counter() - t
        _stream(source, plan, settings, run_id, version, lease, stats, phases, dask_runner.submit, warm.slots,
                artifacts, before_staging, functools.partial(keep_workers, dask_runner))


def warm_cluster(runner, settings: Settings, extractor: bool = True) -> WarmCluster:
    """Every worker loads the model, JVM (unless `extractor` is off) and GX context now, in parallel, and not inside
    its first batch; the collection exists with the model's dimension."""
    dims = set(runner.client.run(warm_up_dim, settings, extractor).values())
    runner.client.run(imported)
    warm = WarmCluster(runner=runner, slots=sum(runner.client.nthreads().values()) or 1, dim=dims.pop())
    clients.milvus_store(settings).ensure_collection(warm.dim, model_id(settings))
    return warm


def _stream(source: str, plan: planning.Plan, settings: Settings, run_id: str, version: str, lease: Lease,
            stats: RunStats, phases: dict[str, float], submit, slots: int, artifacts: bool = True,
            before_staging: Callable[[], None] | None = None, keep: Callable[[], int] | None = None,
            sizing: Callable[[int, int, int], int] = pipeline.batch_size_for) -> None:
    log = get_run_logger()
    store, ledger = clients.milvus_store(settings), clients.ledger(settings)
    t = time.perf_counter()
    per_batch = sizing(plan.todo, settings.docs_per_batch, slots)
    total, allowed = -(-plan.todo // per_batch), settings.max_quarantined_fraction * plan.todo
    batches = enumerate((b for page in planning.todo_pages(ledger, settings.collection, plan)
                         for b in pipeline.make_batches(page, per_batch)), start=1)
    in_flight: deque = deque()
    # Halves of batches whose worker process kept dying, with the deaths so far: they go before new batches, so the
    # window stays bounded and a poison document is cornered while its batch-mates wait.
    split: deque = deque()
    numbers = itertools.count(total + 1)
    progress = create_progress_artifact(0.0, description=f"batches of {plan.todo} documents: 0/{total}") \
        if artifacts else None

    def submit_next() -> None:
        if split:
            i, batch, died = split.popleft()
        elif (nxt := next(batches, None)) is not None:
            (i, batch), died = nxt, 0
        else:
            return
        reuse = store.vectors_by_hash([o.doc_id for o in batch if o.doc_id in plan.reusable])
        params = {"batch_no": i, "batches": max(i, total), "objects": batch, "source": source,
                  "settings": settings, "reuse": reuse, "trace": telemetry.carrier()}
        # In this process a batch is a direct task call, run when its turn comes (below).
        in_flight.append((i, batch, died, submit(process_batch, params) if submit else params))

    for _ in range(max(2, 2 * slots) if submit else 1):
        submit_next()
    if before_staging is not None:  # the workers are busy with this run's first batches meanwhile
        before_staging()
    done = 0
    while in_flight:
        i, batch, died, pending = in_flight.popleft()
        try:
            result = _outcome(pending, keep) if submit else process_batch(**pending)
        except KilledWorker as exc:  # every worker that ran it died (a JVM crash, OOM): one document is the cause
            died += exc.allowed_failures + 1
            if len(batch) > 1:
                half = len(batch) // 2
                split.extendleft([(next(numbers), batch[half:], died), (next(numbers), batch[:half], died)])
                total += 1
                log.warning("batch %d: its worker process died %d times; splitting it to find the document that "
                            "kills it", i, died)
                del pending
                submit_next()
                continue
            result = worker_lost(batch[0], died)
        del pending
        submit_next()
        stats.add(result)
        if stats.quarantined > allowed:
            raise QualityGateError(
                f"{stats.quarantined} of {plan.todo} documents failed the quality gates (limit "
                f"{settings.max_quarantined_fraction:.0%}); the run stopped and rolled back, nothing was "
                "changed. See the quality-gates artifact")
        lease.check()
        t_write = time.perf_counter()
        stats.chunks_written += write_batch(i, max(i, total), quote(result), settings, run_id, version)
        stats.stage_seconds["write"] = round(stats.stage_seconds.get("write", 0.0) + time.perf_counter() - t_write, 3)
        done += len(result.documents) + len(result.failures)
        del result
        if progress is not None:
            update_progress_artifact(progress, 100.0 * done / max(plan.todo, 1),
                                     description=f"batch {i}/{total} staged: {done}/{plan.todo} documents")
        log.info("batch %d/%d staged: %d documents indexed, %d failed, %d quarantined so far", i, total,
                 stats.indexed, stats.failed, stats.quarantined)
    phases["process_and_write"] = time.perf_counter() - t


def worker_lost(obj: SourceObject, died: int) -> BatchResult:
    """A document that kills every worker process it runs in: a transient failure, so later runs retry it (backing
    off) while its previous version, if any, stays served; its batch-mates were indexed without it."""
    return BatchResult(failures=[Failure(
        doc_id=obj.doc_id, source_uri=obj.uri, fingerprint=obj.fingerprint, stage="extract", reason="worker_lost",
        detail=f"its worker process died {died} times while processing it alone or in its batch (a JVM crash or "
               "out of memory?)")])


def _outcome(pending, keep: Callable[[], int] | None, check_s: float = WORKERS_CHECK_S):
    """A batch's result. While waiting, `keep` (flows.runner.keep_workers) starts again any worker of the run's own
    cluster that its nanny gave up on: the batch would otherwise wait for a worker that never comes."""
    while True:
        try:
            return pending.result(timeout=check_s if keep else None)
        except TimeoutError:
            if pending.wrapped_future.done():  # the batch's own error, not the wait's
                return pending.result()
            if missing := keep():
                get_run_logger().warning("%d worker process(es) of this run's Dask cluster had stopped for good (their "
                                         "nanny could not restart them in time); started again", missing)
