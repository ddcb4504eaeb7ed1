import pytest

from millrace.config import load_settings

pytestmark = pytest.mark.integration


def _worker_view():
    import os

    import torch

    from millrace.embed import Embedder

    vectors = Embedder(load_settings()).encode(["pump seal", "leave policy"])
    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), len(vectors), len(vectors[0])


def test_a_dask_worker_encodes_on_all_of_its_threads(dask_cluster):
    """Dask starts workers with OMP_NUM_THREADS=1; the model must still use the worker's threads (here 2)."""
    from distributed import Client

    with Client(dask_cluster) as client:
        threads, omp, n, dim = client.submit(_worker_view, pure=False).result()
        nthreads = next(iter(client.nthreads().values()))
    assert omp == "1" and threads == nthreads == 2 and (n, dim) == (2, 384)
