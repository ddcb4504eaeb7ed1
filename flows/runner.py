"""Where the flow's tasks run: an existing Dask scheduler, or a LocalCluster started for the run."""

from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner

from millrace.config import Settings


def dask_task_runner(settings: Settings | None = None) -> DaskTaskRunner:
    """Read at call time, so flags and MILLRACE_DASK_* set before a run take effect."""
    address = settings.dask_address if settings else os.environ.get("MILLRACE_DASK_ADDRESS", "")
    if address:
        return DaskTaskRunner(address=address)
    workers = (settings.dask_workers if settings else int(os.environ.get("MILLRACE_DASK_WORKERS", "0"))) or 1
    cores = os.cpu_count() or 1
    threads = (settings.dask_threads if settings else int(os.environ.get("MILLRACE_DASK_THREADS", "0"))) \
        or max(1, min(2, cores // workers))
    # Processes, not threads: each worker owns one JVM and one model copy, loaded once and reused.
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": workers, "threads_per_worker": threads, "processes": True,
                                          "dashboard_address": None})
