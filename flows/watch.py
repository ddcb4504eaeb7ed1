"""A local folder kept in sync the way an S3 prefix is: the `watch` flow (a long-lived run on a worker), `millrace
watch DIR` and `millrace serve --watch DIR` all run `run_watch`.

It starts the folder's watcher (millrace.events.folder_watch), mirrors the whole folder once with the ingest flow (cheap when
nothing changed; it catches what changed while nobody watched), then runs the drain flow whenever the collection's
queue has due changes. The watcher starts first, so a change made while the first ingest lists the folder is queued
rather than missed. Everything runs in this process: on the embedded default it is the one that owns the Lite file."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Callable

from prefect import flow, get_run_logger
from pydantic import Field

from blocks import load_settings
from flows.drain import run_drain, run_name
from millrace import clients
from millrace.config import Settings
from millrace.events.folder_watch import FolderWatcher

log = logging.getLogger("millrace")


@flow(name="watch", flow_run_name="watch {folder}")
def watch(
    folder: str = Field(..., description="The local folder to keep the collection in sync with"),
    collection: str | None = Field(None, description="The collection (alias) to write; default from settings"),
    options: dict[str, Any] | None = Field(None, description="Setting overrides, as for the ingest flow"),
) -> None:
    """Mirror a local folder into the collection, then index its changes as they happen, until cancelled."""
    settings = load_settings(**{**(options or {}), **({"collection": collection} if collection else {})})
    run_watch(settings, folder, threading.Event(), report=get_run_logger().info, options=options)


def run_watch(settings: Settings, folder: str, stop: threading.Event, report: Callable[[str], Any] = print,
              options: dict[str, Any] | None = None) -> None:
    """Ingest `folder`, then watch it and drain the queue until `stop` is set; `report` gets a line per drain."""
    from flows.ingest import ingest

    wake = threading.Event()
    key = uuid.uuid4().hex
    _signals[key] = (stop, wake)
    watcher = FolderWatcher(settings, folder, on_change=lambda n: wake.set())
    watching = threading.Thread(target=watcher.run, args=(stop,), name=f"watch {folder}", daemon=True)
    watching.start()
    try:
        summary = ingest(source=folder, collection=settings.collection, options=options)
        report(f"{folder}: {summary['indexed']} indexed, {summary['skipped']} unchanged, {summary['deleted']} "
               f"deleted; watching for changes")
        queue, logical = clients.change_queue(settings), settings.collection
        while not stop.is_set():
            if not watching.is_alive():
                raise RuntimeError(f"the watcher of {folder} stopped")
            # Due, not pending: an entry waiting for its retry backoff would otherwise start an empty run each poll.
            if queue.stats(logical).due:
                done = drain_watched(collection=logical, options=options, signals=key)
                report(f"indexed {done['changes']} changes in {done['rounds']} round{'s' * (done['rounds'] != 1)}")
                continue
            wake.wait(settings.drain_poll_s)
            wake.clear()
    finally:
        stop.set()
        watching.join(10)
        _signals.pop(key, None)


# The events of the watches running in this process, by key. A flow parameter cannot carry a threading.Event, and a
# flow whose function held one (a closure, or this dict named in its body) could not be shipped to Dask workers:
# Prefect serialises the run's context, flow included, with every batch it submits, and an Event holds a lock (a
# round too big for this process, run on a LocalCluster, failed with "cannot pickle '_thread.lock'").
_signals: dict[str, tuple[threading.Event, threading.Event]] = {}


@flow(name="drain", flow_run_name=run_name)
def drain_watched(collection: str | None = None, options: dict[str, Any] | None = None,
                  signals: str = "") -> dict[str, Any]:
    """Index the collection's queued changes round after round until the queue stays empty or the watch stops."""
    settings = load_settings(**{**(options or {}), **({"collection": collection} if collection else {})})
    return run_drain(settings, *_events(signals))


def _events(key: str) -> tuple[threading.Event | None, threading.Event | None]:
    """Looked up through a function: Prefect pickles the flow's function by value, with the globals it names."""
    return _signals.get(key, (None, None))
