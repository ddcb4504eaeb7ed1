import pytest

from flows.runner import local_layout
from millrace.config import Settings

pytestmark = pytest.mark.unit


def test_local_cluster_is_one_single_threaded_process_per_core_up_to_eight():
    assert local_layout(Settings(), cores=2) == (2, 1)
    assert local_layout(Settings(), cores=1) == (1, 1)
    assert local_layout(Settings(), cores=32) == (8, 4)
    assert local_layout(Settings(dask_workers=1), cores=4) == (1, 4)
    assert local_layout(Settings(dask_workers=1, dask_threads=2), cores=16) == (1, 2)


def _profiling(dask_worker) -> bool:
    return "profile" in dask_worker.periodic_callbacks


@pytest.mark.integration
def test_the_runs_own_local_cluster_keeps_no_statistical_profile():
    """Dask's profiler keeps 1,000 one-second call trees per worker: growth a long drain must not carry."""
    import distributed

    from flows.runner import local_cluster

    with local_cluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert list(client.run(_profiling).values()) == [False]
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 1


def _pid() -> int:
    import os

    return os.getpid()


@pytest.mark.integration
def test_a_worker_dropped_by_its_cluster_while_it_restarts_is_started_again():
    """A killed worker's nanny starts a new process; when that process takes longer than Dask's lost-worker-timeout
    to come back (model, JVM and warm-up on a loaded machine), the cluster closes the nanny and forgets the worker.
    With one worker, every task then waits for ever: a full test run hung so for 20 minutes."""
    import os
    import signal
    import time

    import dask
    from prefect_dask import DaskTaskRunner

    from flows.runner import keep_workers, local_cluster

    runner = DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs={
        "n_workers": 1, "threads_per_worker": 1, "processes": True, "dashboard_address": None})
    with runner, dask.config.set({"distributed.deploy.lost-worker-timeout": "0s"}):
        client, cluster = runner.client, runner.client.cluster
        assert keep_workers(runner) == 0
        pid = next(iter(client.run(_pid).values()))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while cluster.workers and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not cluster.workers, "the cluster kept its worker: the fault was not reproduced"
        assert keep_workers(runner) == 1
        client.wait_for_workers(1, timeout=120)
        assert client.submit(_pid, pure=False).result(timeout=120) != pid
