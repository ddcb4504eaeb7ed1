"""Where the processing tasks run: an existing Dask scheduler, or a LocalCluster started for the run."""

from __future__ import annotations

import os
from dataclasses import dataclass

import dask
import distributed
from prefect_dask import DaskTaskRunner

from millrace.config import Settings

MAX_LOCAL_WORKERS = 8  # each worker process holds a model copy and a JVM (up to MILLRACE_TIKA_HEAP)
# For the LocalClusters started here. A task may see one worker death (a killed process, a neighbour's OOM) and be
# rescheduled; at the second Dask gives up with KilledWorker and the flow splits the batch to corner the document
# that kills its worker (flows.batches._stream). Each halving costs allowed + 1 worker restarts, so Dask's default
# of 3 would take twice as long. And a worker runs only as many batches as it has threads (Dask's default
# saturation queues one more on it), so a death is blamed on the batch that was running, not a bystander.
# A configured scheduler (MILLRACE_DASK_ADDRESS) keeps its own settings.
# Dask's statistical profiler samples every thread every 10 ms and keeps 1,000 one-second call trees per worker:
# ~15 MB/min of growth for a worker's first 17 minutes (deployments/Procfile turns it off for standing workers too).
LOCAL_SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0,
                          "distributed.worker.profile.enabled": False}


def local_cluster(**kwargs) -> distributed.LocalCluster:
    """A LocalCluster whose scheduler (in this process) starts with LOCAL_SCHEDULER_CONFIG."""
    # Workers keep the JVM's own signal handling even when this process asked for -Xrs (`millrace watch`): a worker
    # whose nanny stops it must exit, not wait for the JVM's threads.
    options = [o for o in os.environ.get("JAVA_TOOL_OPTIONS", "").split() if o != "-Xrs"]
    kwargs.setdefault("env", {"JAVA_TOOL_OPTIONS": " ".join(options)})
    with dask.config.set(LOCAL_SCHEDULER_CONFIG):
        return distributed.LocalCluster(**kwargs)


def keep_workers(runner: DaskTaskRunner) -> int:
    """Start again the workers of the run's own LocalCluster that are gone for good, and say how many there were.

    A nanny restarts its worker when the process dies (a JVM crash, an OOM kill), but gives up when the new one does
    not come up in time (a loaded machine: model, JVM and warm-up in every start), and closes. Its cluster then has
    fewer workers than it was asked for, none at all with one worker, and the run's tasks wait for ever. A
    configured scheduler's workers are its operator's to keep: nothing is done there."""
    cluster = getattr(runner.client, "cluster", None)
    if not isinstance(cluster, distributed.SpecCluster) or cluster.status.name != "running":
        return 0
    missing = len(set(cluster.worker_spec) - set(cluster.workers))
    if missing:
        cluster.scale(len(cluster.worker_spec))  # opens what the spec names and the cluster lacks
    return missing


def local_layout(settings: Settings, cores: int | None = None) -> tuple[int, int]:
    """Worker processes and threads per worker for a LocalCluster.

    One single-threaded process per core: extraction (Python + JVM) in one process never holds the GIL that
    another's encoder needs. On the shared documents that took an ingest from 149 s (1 process x 2 threads) to
    116 s on 2 cores; on SciFact records both layouts are equal (BENCHMARKS.md)."""
    cores = cores or os.cpu_count() or 1
    workers = settings.dask_workers or max(1, min(cores, MAX_LOCAL_WORKERS))
    threads = settings.dask_threads or max(1, cores // workers)
    return workers, threads


def dask_task_runner(settings: Settings) -> DaskTaskRunner:
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    workers, threads = local_layout(settings)
    # Processes, not threads: each worker owns one JVM and one model copy, loaded once and reused.
    return DaskTaskRunner(cluster_class=local_cluster,
                          cluster_kwargs={"n_workers": workers, "threads_per_worker": threads, "processes": True,
                                          "dashboard_address": None})


@dataclass
class WarmCluster:
    """A task runner whose workers have loaded the model, JVM and GX context (flows.batches.warm_cluster): a
    draining run holds one for all its rounds instead of connecting and warming up per round."""
    runner: DaskTaskRunner
    slots: int
    dim: int
