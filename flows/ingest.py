"""The `ingest` flow: mirror a folder, record file or S3 prefix (or named objects in it) into a Milvus collection."""

from __future__ import annotations

import functools
import itertools
import resource
import sys
import time
import uuid
from collections import deque
from datetime import date, datetime, timezone
from typing import Any, Callable, Generator

from distributed import KilledWorker
from prefect import flow, get_run_logger
from pydantic import Field
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
# Prefect walks every element of a direct task call's arguments looking for futures; a batch of vectors is ~10^5
# floats. quote() skips that walk.
from prefect.utilities.annotations import quote

from blocks import load_settings
from flows.report import RunStats, ingest_report, quality_report
from flows.runner import WarmCluster, dask_task_runner, keep_workers
from millrace import clients, pipeline
from millrace.index import lite_index, versions
from millrace.ledger import staging
from millrace.observe import telemetry
from millrace.ledger import plan as planning
from millrace.config import Settings
from millrace.documents.embed import model_id
from millrace.sources.jsonl import is_jsonl
from millrace.ledger.lease import Lease
from millrace.documents.quality import QualityGateError
from millrace.documents.records import BatchResult, Failure, SourceObject
from millrace.platform.warmup import warm_up, warm_up_dim
from millrace.sources.base import canonical_source_uri
from tasks.ingest import commit_run, imported, list_source, process_batch, rollback_run, write_batch

# How often a wait for a batch looks for workers of the run's own cluster that are gone for good (flows.runner).
WORKERS_CHECK_S = 30.0


class ReconciliationError(RuntimeError):
    """Milvus and the ledger disagree after a run: the index is not a mirror of the source."""


@flow(name="ingest", flow_run_name="ingest {source}")
def ingest(
    source: str = Field(..., description="A folder, a .jsonl[.gz] record file, or s3://bucket/prefix"),
    collection: str | None = Field(None, description="The collection (alias) to write; default from settings"),
    retry_failed: bool = Field(False, description="Also retry documents that failed for good"),
    objects: list[str] | None = Field(
        None, description="Only these paths/keys, relative to the source; a named one that is gone is deleted"),
    options: dict[str, Any] | None = Field(
        None, description='Setting overrides (MILLRACE_* names in lower case), e.g. {"include": ["*.pdf"]}'),
    prefix: str = Field("", description="Only keys/paths under this prefix of the source, e.g. 2026/reports/"),
    since: date | datetime | None = Field(
        None, description="Only process documents modified on or after this date (deletions are still mirrored)"),
) -> dict[str, Any]:
    """Index new and changed documents of a source, drop deleted ones, and reconcile Milvus with the ledger."""
    overrides = {**(options or {}), **({"collection": collection} if collection else {})}
    settings = load_settings(**overrides)
    source, settings = with_prefix(source, prefix, settings)
    return run_ingest(source, settings, retry_failed, objects, since=epoch(since))


def with_prefix(source: str, prefix: str, settings: Settings) -> tuple[str, Settings]:
    """A key prefix as a narrower source (its folder part) plus an include pattern (the rest, if any)."""
    prefix = prefix.lstrip("/")
    if not prefix:
        return source, settings
    folder, _, rest = prefix.rpartition("/")
    narrowed = source.rstrip("/") + ("/" + folder if folder else "")
    if rest:
        settings = settings.model_copy(update={"include": [f"{rest}*"] + list(settings.include)})
    return narrowed, settings


def epoch(when: date | datetime | None) -> float | None:
    """A date means its midnight UTC; a naive datetime is taken as UTC."""
    if when is None:
        return None
    if not isinstance(when, datetime):
        when = datetime.combine(when, datetime.min.time())
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def run_ingest(source: str, settings: Settings, retry_failed: bool = False,
               objects: list[str] | None = None, *, since: float | None = None,
               physical: str | None = None, round_id: str | None = None, runner: WarmCluster | None = None,
               artifacts: bool = True) -> dict[str, Any]:
    """One mirroring run. A draining run (flows/drain.py) calls it once per round: `round_id` names the round's
    ledger run while the lease stays the flow run's, `runner` is the Dask runner it holds for all its rounds, and
    `artifacts=False` leaves the per-round reporting to the drain."""
    return finish(ingest_steps(source, settings, retry_failed, objects, since=since, physical=physical,
                               round_id=round_id, runner=runner, artifacts=artifacts))


def finish(steps: Generator[str, None, dict[str, Any]]) -> dict[str, Any]:
    """Drive a run's steps (ingest_steps) to the end; its summary."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value


def ingest_steps(source: str, settings: Settings, retry_failed: bool = False,
                 objects: list[str] | None = None, *, since: float | None = None,
                 physical: str | None = None, round_id: str | None = None, runner: WarmCluster | None = None,
                 artifacts: bool = True, recover: bool = True, before_staging: Callable[[], None] | None = None
                 ) -> Generator[str, None, dict[str, Any]]:
    """run_ingest in two steps: it yields "staged" once every batch is staged, and commits, reconciles and returns
    the summary when resumed. A draining run commits a round in the background while the next round is planned
    and its batches are on the workers: `before_staging` is called before the next round writes anything to
    Milvus (it waits for the commit), and `recover=False` skips staging recovery, which would take the committing
    round's pending writes for a dead run's."""
    log = get_run_logger()
    started = time.perf_counter()
    lease_id = str(flow_run.get_id() or uuid.uuid4())
    run_id = round_id or lease_id
    ledger, logical = clients.ledger(settings), settings.collection
    scope = planning.Scope(source=canonical_source_uri(source), include=settings.include, exclude=settings.exclude,
                           objects=None if objects is None else sorted({o.strip("/") for o in objects}), since=since)
    # The lease is on the name readers use, so a rebuild (which holds it throughout) and ordinary runs take turns;
    # a rebuild's own ingests (`physical`: its new collection) re-enter its lease with its run id.
    lease = Lease(ledger, logical, lease_id, f"ingest of {scope.describe()}", settings.lease_ttl_s,
                  settings.lease_wait_s, on_wait=log.warning)
    named = settings  # the logical name's settings: `settings` is the physical collection's below
    with lease, versions.writing(settings, physical) as settings:
        if physical is not None:  # one source of a rebuild: a run (ledger row, listing, staging) of its own
            run_id = str(uuid.uuid4())
        collection = settings.collection  # physical from here on: the ledger's rows and counts are its own
        ledger.start_run(collection, run_id, source, scope.model_dump())
        store = clients.milvus_store(settings)
        recovered = staging.recover(store, ledger, collection, run_id) if recover else []
        phases: dict[str, float] = {"wait_for_lease": lease.waited_s}
        t = time.perf_counter()
        version = pipeline.pipeline_version(settings)
        # Listed into the ledger and classified there, page by page: memory does not grow with the source.
        try:  # called, not submitted: listing runs here, no cluster needed
            list_source(source, settings, run_id, scope)
            plan = planning.classify(ledger, collection, run_id, version, retry_failed, since=since)
        except BaseException:  # e.g. S3 unreachable: nothing was changed, and the ledger says the run failed
            ledger.set_run_state(run_id, "failed")
            planning.forget_listing(ledger, run_id)
            raise
        log.info("%d documents in %s: %d to process, %d unchanged, %d waiting to retry", plan.seen,
                 scope.describe(), plan.todo, plan.skipped, plan.waiting)
        phases["plan"] = time.perf_counter() - t
        stats = RunStats()
        try:
            if plan.todo:
                _process(source, plan, settings, run_id, version, lease, stats, phases, runner, artifacts,
                         before_staging)
            yield "staged"
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
            if artifacts or stats.quarantined:
                create_markdown_artifact(key="quality-gates", markdown=quality_report(stats, scope.describe()),
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
        if physical is None and round_id is None and check["ok"]:  # a drain looks once, at its end (flows.drain)
            if (moved := lite_index.reindex_if_due(named, log.info, log.warning)) is not None:
                summary["reindexed"] = moved
    if artifacts:
        create_markdown_artifact(key=f"ingest-{_key(collection)}", markdown=ingest_report(summary),
                                 description=f"ingest of {scope.describe()}")
    if not check["ok"]:
        raise ReconciliationError(
            f"Milvus holds {check['milvus_count']} chunks of {collection}, the ledger expects "
            f"{check['ledger_count']}; documents off: {check['mismatched_docs'][:5]}. Re-run the ingest to converge")
    return summary


def _process(source: str, plan: planning.Plan, settings: Settings, run_id: str, version: str, lease: Lease,
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
                artifacts, before_staging, functools.partial(keep_workers, runner.runner))
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
            before_staging: Callable[[], None] | None = None, keep: Callable[[], int] | None = None) -> None:
    log = get_run_logger()
    store, ledger = clients.milvus_store(settings), clients.ledger(settings)
    t = time.perf_counter()
    per_batch = pipeline.batch_size_for(plan.todo, settings.docs_per_batch, slots)
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


def peak_rss_mb() -> float:
    """This process's peak resident memory (the flow's, not the workers')."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())


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
