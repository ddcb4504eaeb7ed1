"""The `drain` flow: one run per collection holds the lease and indexes the change queue round after round.

Each round takes everything pending (up to drain_max_changes / drain_max_bytes), mirrors exactly those objects with
the ingest flow's machinery (a ledger run per round, staging, reconciliation), then removes from the queue exactly
the entries it committed (millrace.events.drain.settle). A kill mid-round leaves them queued, and staging recovery in the
next run finishes or undoes the round's writes. The first change after a quiet period goes alone and at once; when
changes arrive faster than a round takes, rounds grow by themselves, so fixed costs are paid per round, not per
change. A round commits in the background while the next one is planned and processed, which stages nothing until
that commit is done. The run stays while work keeps coming and exits after drain_idle_s without any (or after drain_max_run_s),
looking at the queue one last time first. Wake-ups (the relay's `millrace.changes.pending` events, a scheduled
sweep) start a run; the deployment's CANCEL_NEW limit drops those that arrive while one drains."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Generator

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from pydantic import Field

from blocks import load_settings
from flows.batches import warm_cluster
from flows.ingest import finish, ingest_steps, run_ingest
from flows.runner import WarmCluster, dask_task_runner
from millrace import clients
from millrace.config import Settings
from millrace.events.drain import LEASE_SOURCE, Settled, by_source, settle
from millrace.events.queue import Entry, entry_key
from millrace.index import lite_index, versions
from millrace.ledger.lease import Lease


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
                lite_index.reindex_if_due(settings, log.info, log.warning)  # rounds all committed, lease still held
            # The relay sends no wake-ups while this run holds the lease (millrace.events.drain.draining): a change queued
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
    enough, or `stop` is set). A round's commit, reconciliation and settling run in the background while the next
    round is taken, planned and sent to the workers, which would otherwise wait for them (~0.9 s a round); the next
    round writes nothing to Milvus until that commit is done, and takes none of its keys."""
    log, queue, logical = get_run_logger(), clients.change_queue(settings), settings.collection
    last_work = time.monotonic()
    numbers = itertools.count(1)
    with Committing() as committing:
        while True:
            lease.check()
            entries = queue.take(logical, settings.drain_max_changes, settings.drain_max_bytes,
                                 exclude=committing.keys)
            if not entries:
                if committing.busy:  # its settling may leave work (a newer change of one of its objects)
                    committing.wait()
                    continue
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
                committing.wait()
                cluster.append(warm_cluster(held.enter_context(dask_task_runner(settings)), settings))
            t = time.perf_counter()
            number = next(numbers)
            rest = start_round(settings, run_id, number, entries, cluster[0] if cluster else None, committing)
            # partial, not a lambda: the loop rebinds these names while the round commits
            committing.submit(entries, functools.partial(_close_round, settings, run_id, number, entries, rest, t,
                                                         totals, progress))
            last_work = time.monotonic()
            if time.monotonic() - started >= settings.drain_max_run_s or (stop and stop.is_set()):
                return  # what is left is found by the next wake-up or the sweep


class Committing:
    """The round committing in the background: at most one, on one thread that carries the flow run's context
    (Prefect's task runs, logger and artifacts need it). `wait` re-raises its failure; leaving the block waits."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="drain-commit")
        self._future: Future | None = None
        self.keys: frozenset[str] = frozenset()

    @property
    def busy(self) -> bool:
        return self._future is not None

    def submit(self, entries: list[Entry], fn: Callable[[], None]) -> None:
        self.wait()
        self.keys = frozenset(entry_key(e.source, e.object) for e in entries)
        self._future = self._pool.submit(contextvars.copy_context().run, fn)

    def wait(self) -> None:
        future, self._future = self._future, None
        try:
            if future is not None:
                future.result()
        finally:
            self.keys = frozenset()

    def __enter__(self) -> "Committing":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.wait()  # never leave the lease with a round half-committed
        except BaseException:
            if exc[0] is None:
                raise
            get_run_logger().exception("the round committing in the background failed too")
        finally:
            self._pool.shutdown()


def start_round(settings: Settings, run_id: str, number: int, entries, cluster: WarmCluster | None,
                committing: Committing) -> list[Generator]:
    """Plan a round's objects, one ingest of named objects per source, and stage them; the ingests' unfinished rest
    (commit, reconciliation), for _close_round. Staging waits for the previous round's commit: Milvus then holds
    no chunk that this round's or that round's reconciliation does not expect. All sources but the last commit here,
    for the same reason."""
    steps = []
    groups = list(by_source(entries).items())
    for i, (source, group) in enumerate(groups):
        run = ingest_steps(source, settings, objects=[e.object for e in group], round_id=f"{run_id}-r{number}-{i}",
                           runner=cluster, artifacts=False, recover=not committing.busy,
                           before_staging=committing.wait)
        next(run)  # planned, processed and staged
        committing.wait()
        if i < len(groups) - 1:
            finish(run)
        else:
            steps.append(run)
    return steps


def _close_round(settings: Settings, run_id: str, number: int, entries, rest: list[Generator], started: float,
                 totals: dict[str, int], progress) -> None:
    """Commit and reconcile a staged round, settle its queue entries, and report it."""
    log, queue, logical = get_run_logger(), clients.change_queue(settings), settings.collection
    for run in rest:
        finish(run)
    settled = settle_round(settings, entries)
    seconds = time.perf_counter() - started
    queue.record_round(logical, run_id, len(entries), seconds)
    totals["rounds"] += 1
    totals["changes"] += len(entries)
    totals["done"] += settled.done
    totals["retrying"] += settled.retrying
    totals["dead"] += len(settled.dead)
    pending = queue.stats(logical).pending
    log.info("round %d: %d changes in %.2fs (%d retrying, %d dead); %d still queued", number, len(entries), seconds,
             settled.retrying, len(settled.dead), pending)
    update_progress_artifact(progress, 100.0 * totals["done"] / max(1, totals["done"] + pending),
                             description=f"round {number}: {len(entries)} changes in {seconds:.1f}s; "
                                         f"{totals['changes']:,} so far, {pending} queued")


def settle_round(settings: Settings, entries) -> Settled:
    """Settle a committed round's queue entries; objects that kept failing are set aside (and sent to the DLQ)."""
    physical = versions.active_physical(settings)
    settled = settle(clients.change_queue(settings), clients.ledger(settings), physical, entries, settings)
    if settled.dead:
        get_run_logger().warning("%d objects kept failing and were set aside (millrace status shows why): %s",
                                 len(settled.dead), ", ".join(f"{e.source}/{e.object}" for e in settled.dead[:5]))
        if settings.sqs_dlq_url and any(e.origin.startswith("sqs:") for e in settled.dead):
            from millrace.events.sqs_dlq import forward_dead

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
