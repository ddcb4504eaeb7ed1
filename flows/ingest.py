"""The `ingest` flow: mirror a folder, record file or S3 prefix (or named objects in it) into a Milvus collection."""

from __future__ import annotations

import resource
import sys
import time
import uuid
from datetime import date, datetime, timezone
from typing import Any, Callable, Generator

from prefect import flow, get_run_logger
from pydantic import Field
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from blocks import load_settings
from flows.batches import process_batches
from flows.report import RunStats, ingest_report, quality_report
from flows.runner import WarmCluster
from millrace import clients, pipeline
from millrace.config import Settings
from millrace.index import lite_index, staging, versions
from millrace.ledger import plan as planning
from millrace.ledger.lease import Lease
from millrace.uris import canonical_source_uri
from tasks.ingest import commit_run, list_source, rollback_run


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
                process_batches(source, plan, settings, run_id, version, lease, stats, phases, runner,
                                artifacts, before_staging)
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


def peak_rss_mb() -> float:
    """This process's peak resident memory (the flow's, not the workers')."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
