"""The `drain` flow: one run per collection holds the lease and indexes the change queue round after round.

Each round takes everything pending (up to drain_max_changes / drain_max_bytes), mirrors exactly those objects with
the ingest flow's machinery (a ledger run per round, staging, reconciliation), then removes from the queue exactly
the entries it committed (millrace.drain.settle). A kill mid-round leaves them queued, and staging recovery in the
next run finishes or undoes the round's writes. The first change after a quiet period goes alone and at once; when
changes arrive faster than a round takes, rounds grow by themselves, so fixed costs are paid per round, not per
change. The run stays while work keeps coming and exits after drain_idle_s without any (or after drain_max_run_s),
looking at the queue one last time first. Wake-ups (the relay's `millrace.changes.pending` events, a scheduled
sweep) start a run; the deployment's CANCEL_NEW limit drops those that arrive while one drains."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from pydantic import Field

from blocks import load_settings
from flows.ingest import run_ingest, warm_cluster
from flows.runner import WarmCluster, dask_task_runner
from millrace import clients, versions
from millrace.config import Settings
from millrace.drain import LEASE_SOURCE, Settled, by_source, settle
from millrace.lease import Lease


def run_name() -> str:
    """`drain millrace`: the collection, readable in the runs list (the totals are added when the run ends)."""
    p = flow_run.parameters or {}
    return f"drain {p.get('collection') or 'default collection'}"


@flow(name="drain", flow_run_name=run_name)
def drain(
    collection: str | None = Field(None, description="The collection (alias) whose queue to drain; default from settings"),
    options: dict[str, Any] | None = Field(None, description="Setting overrides, as for the ingest flow"),
) -> dict[str, Any]:
    """Index the collection's queued changes round after round until the queue stays empty."""
    settings = load_settings(**{**(options or {}), **({"collection": collection} if collection else {})})
    return run_drain(settings)


def run_drain(settings: Settings, stop=None, wake=None) -> dict[str, Any]:
    """The drain loop; `stop` (a threading.Event) ends it early, after the round in progress (`serve --watch`);
    `wake` (another), set by a watcher in this process when it queued changes, ends an idle wait at once."""
    log = get_run_logger()
    # A stream of independent changes is not one batch: a quarantined document is recorded with its reason, and
    # must not roll back the others of its round (the batch ingest's limit guards against a broken pipeline).
    settings = settings.model_copy(update={"max_quarantined_fraction": 1.0})
    queue, ledger, logical = clients.change_queue(settings), clients.ledger(settings), settings.collection
    run_id = str(flow_run.get_id() or uuid.uuid4())
    started = time.monotonic()
    totals = {"rounds": 0, "changes": 0, "done": 0, "retrying": 0, "dead": 0}
    if not queue.take(logical, 1):  # a sweep or a late wake-up with nothing to do: no lease, no cluster
        log.info("nothing queued for %s", logical)
        return {"collection": logical, **totals, "seconds": 0.0}
    progress = create_progress_artifact(0.0, description=f"draining {logical}")
    with contextlib.ExitStack() as held:
        cluster: list[WarmCluster] = []
        while True:
            with Lease(ledger, logical, run_id, LEASE_SOURCE, settings.lease_ttl_s, settings.lease_wait_s,
                       on_wait=log.warning) as lease:
                if settings.dask_address and not cluster:  # the standing cluster: connected and warmed once
                    cluster.append(warm_cluster(held.enter_context(dask_task_runner(settings)), settings))
                _rounds(settings, run_id, lease, cluster, held, totals, progress, started, stop, wake)
            # The relay sends no wake-ups while this run holds the lease (millrace.drain.draining): a change queued
            # after the last look but before the release would wait for the sweep. Look once more, lease released.
            if (stop and stop.is_set()) or time.monotonic() - started >= settings.drain_max_run_s \
                    or not queue.take(logical, 1):
                break
            log.info("changes were queued as the lease was released: draining on")
    summary = {"collection": logical, **totals, "seconds": round(time.monotonic() - started, 2)}
    name = f"drain {logical}: {totals['changes']:,} changes in {totals['rounds']} round{'s' * (totals['rounds'] != 1)}"
    create_markdown_artifact(key=f"drain-{_key(logical)}", description=name, markdown=(
        f"# {name}\n\n| indexed or final | retrying | dead | seconds |\n|---|---|---|---|\n"
        f"| {totals['done']} | {totals['retrying']} | {totals['dead']} | {summary['seconds']} |\n"))
    _rename(name)
    return summary


def _rounds(settings: Settings, run_id: str, lease: Lease, cluster: list[WarmCluster], held: contextlib.ExitStack,
            totals: dict[str, int], progress, started: float, stop, wake) -> None:
    """Round after round while the lease is held, until the queue stays empty for drain_idle_s (or the run is long
    enough, or `stop` is set)."""
    log, queue, logical = get_run_logger(), clients.change_queue(settings), settings.collection
    last_work = time.monotonic()
    while True:
        lease.check()
        entries = queue.take(logical, settings.drain_max_changes, settings.drain_max_bytes)
        if not entries:
            idle, running = time.monotonic() - last_work, time.monotonic() - started
            if idle >= settings.drain_idle_s or running >= settings.drain_max_run_s or (stop and stop.is_set()):
                return
            if wake is None:
                time.sleep(settings.drain_poll_s)
            else:  # a change queued in this process needs no poll to be seen
                wake.wait(settings.drain_poll_s)
                wake.clear()
            continue
        if not cluster and len(entries) > settings.inprocess_max_docs:
            # Behind on the embedded default: a LocalCluster, started once and kept for the rounds after.
            cluster.append(warm_cluster(held.enter_context(dask_task_runner(settings)), settings))
        t = time.perf_counter()
        settled = run_round(settings, run_id, totals["rounds"] + 1, entries, cluster[0] if cluster else None)
        seconds = time.perf_counter() - t
        queue.record_round(logical, run_id, len(entries), seconds)
        totals["rounds"] += 1
        totals["changes"] += len(entries)
        totals["done"] += settled.done
        totals["retrying"] += settled.retrying
        totals["dead"] += len(settled.dead)
        pending = queue.stats(logical).pending
        log.info("round %d: %d changes in %.2fs (%d retrying, %d dead); %d still queued", totals["rounds"],
                 len(entries), seconds, settled.retrying, len(settled.dead), pending)
        update_progress_artifact(progress, 100.0 * totals["done"] / max(1, totals["done"] + pending),
                                 description=f"round {totals['rounds']}: {len(entries)} changes in "
                                             f"{seconds:.1f}s; {totals['changes']:,} so far, {pending} queued")
        last_work = time.monotonic()
        if time.monotonic() - started >= settings.drain_max_run_s or (stop and stop.is_set()):
            return  # what is left is found by the next wake-up or the sweep


def run_round(settings: Settings, run_id: str, number: int, entries, cluster: WarmCluster | None) -> Settled:
    """Mirror a round's objects, one ingest of named objects per source, then settle the queue."""
    for i, (source, group) in enumerate(by_source(entries).items()):
        run_ingest(source, settings, objects=[e.object for e in group], round_id=f"{run_id}-r{number}-{i}",
                   runner=cluster, artifacts=False)
    physical = versions.active_physical(settings)
    settled = settle(clients.change_queue(settings), clients.ledger(settings), physical, entries, settings)
    if settled.dead:
        get_run_logger().warning("%d objects kept failing and were set aside (millrace status shows why): %s",
                                 len(settled.dead), ", ".join(f"{e.source}/{e.object}" for e in settled.dead[:5]))
        if settings.sqs_dlq_url and any(e.origin.startswith("sqs:") for e in settled.dead):
            from millrace.sqs_dlq import forward_dead

            forward_dead(settings, [e for e in settled.dead if e.origin.startswith("sqs:")])
    return settled


def _rename(name: str) -> None:
    """Put the totals in the run's name, where the runs list shows them; best effort."""
    run = flow_run.get_id()
    if not run:
        return
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(run, name=name)
    except Exception as exc:  # a cosmetic update must not fail a run that indexed everything
        get_run_logger().debug("could not rename the run: %s", exc)


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
