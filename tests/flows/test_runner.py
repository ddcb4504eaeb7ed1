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
