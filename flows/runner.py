"""Where the processing tasks run: an existing Dask scheduler, or a LocalCluster started for the run."""

from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner

from millrace.config import Settings


def dask_task_runner(settings: Settings) -> DaskTaskRunner:
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    workers = settings.dask_workers or 1
    threads = settings.dask_threads or max(1, min(2, (os.cpu_count() or 1) // workers))
    # Processes, not threads: each worker owns one JVM and one model copy, loaded once and reused.
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": workers, "threads_per_worker": threads, "processes": True,
                                          "dashboard_address": None})
