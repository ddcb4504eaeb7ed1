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
