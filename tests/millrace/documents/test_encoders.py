"""The exported encoder backends (millrace.documents.encoders) against sentence-transformers on torch: the same dimension, unit
norm and, within each backend's tolerance, the same vectors; the export is made once per model and reused; the
backend is part of the model's identity, so a collection refuses vectors of another backend."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.config import ConfigError, Settings
from millrace.documents.embed import Embedder, backend_of, model_id, resolve_backend, resolve_model_path

pytestmark = pytest.mark.integration

# Messy, realistic inputs: accents, CJK, symbols, surrounding blanks, a text far past the 256-token window (so
# truncation must match), one word, and texts of very different lengths in one batch (so padding must not leak).
TEXTS = ["Aspirin lowers the risk of heart attack in adults over fifty.",
         "  café #1 + naïve résumé: 100% déjà vu  ", "日本語の文章も埋め込める。", "x",
         "BRCA1 mutations & breast-cancer risk (a cohort study, n=12,000; p<0.001).",
         " ".join(f"word{i} of a very long passage about sluices, weirs and tides" for i in range(120))]
# Worst cosine to torch fp32 each backend must reach on every text: exported fp32 runtimes compute the same
# function; int8 weights move vectors a little (NOTES.md measured mean 0.989, min 0.974 on passages).
MIN_COSINE = {"onnx": 0.9999, "openvino": 0.9999, "onnx-int8": 0.95}


@pytest.fixture(scope="module")
def torch_vectors(tmp_path_factory) -> np.ndarray:
    return Embedder(Settings(home=tmp_path_factory.mktemp("torch"), embed_backend="torch")).encode(TEXTS)


@pytest.mark.parametrize("backend", sorted(MIN_COSINE))
def test_a_backend_embeds_like_torch(tmp_path, torch_vectors, backend):
    embedder = Embedder(Settings(home=tmp_path, embed_backend=backend))
    vectors = embedder.encode(TEXTS, batch_size=4)  # batches that mix long and short texts
    assert vectors.shape == torch_vectors.shape and vectors.dtype == np.float32 and embedder.dim == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    cosines = (vectors * torch_vectors).sum(axis=1)
    assert cosines.min() >= MIN_COSINE[backend], dict(zip(TEXTS, cosines.round(5)))
    # Batching and padding do not change a text's vector; int8 a little, as its activations' scale is the batch's.
    alone = embedder.encode(TEXTS[:1], batch_size=1)
    assert float((alone[0] * vectors[0]).sum()) > (0.98 if backend == "onnx-int8" else 0.99999)
    assert embedder.encode([]).shape == (0, 384)


def test_the_export_is_made_once_per_model_and_keyed_by_its_files(tmp_path):
    from pathlib import Path

    from millrace.documents.embed import _exported_encoder

    home, model = tmp_path / "home", Path(resolve_model_path(Settings()))
    in_home = Settings(home=home, model_cache="")  # the default: under MILLRACE_HOME
    _exported_encoder(in_home, model, "onnx")  # what a new process (a Dask worker) does on first use
    [cache] = (home / "models").iterdir()
    exported = cache / "model.onnx"
    stamp = exported.stat().st_mtime_ns
    _exported_encoder(in_home, model, "onnx")
    assert exported.stat().st_mtime_ns == stamp  # reused, not exported again
    copy = tmp_path / "my model"
    shutil.copytree(model, copy)
    (copy / "README.md").write_text("changed")  # other files, another model: another export
    _exported_encoder(in_home, copy, "onnx")
    assert len(list((home / "models").iterdir())) == 2
    # MILLRACE_MODEL_CACHE: one export that homes share, keyed the same way
    shared = tmp_path / "shared cache"
    _exported_encoder(Settings(home=tmp_path / "other home", model_cache=str(shared)), model, "onnx")
    assert [p.name for p in shared.iterdir()] == [cache.name] and not (tmp_path / "other home" / "models").exists()


def test_the_backend_is_part_of_the_model_identity(tmp_path):
    torch_id = model_id(Settings(embed_backend="torch"))
    int8_id = model_id(Settings(embed_backend="onnx-int8"))
    assert torch_id != int8_id and int8_id.endswith("#onnx-int8")
    assert backend_of(torch_id) == "torch" and backend_of(int8_id) == "onnx-int8" and backend_of("a#b") == "torch"
    with pytest.raises(ConfigError, match="MILLRACE_EMBED_BACKEND"):
        resolve_backend(Settings(embed_backend="tensorrt"))
    with pytest.raises(ConfigError, match="on a GPU"):
        resolve_backend(Settings(embed_backend="onnx", device="cuda"))
    assert resolve_backend(Settings(embed_backend="auto", device="cuda")) == "torch"
    # on a CPU, auto is the backend that passed the SciFact gate (BENCHMARKS.md "The quality gate")
    assert resolve_backend(Settings(embed_backend="auto", device="cpu")) == "onnx-int8"


def test_a_collection_refuses_vectors_of_another_backend_and_keeps_its_own(tmp_path):
    from millrace.index import versions
    from millrace.index.store import MilvusStore
    from millrace.search import Retriever

    built = Settings(home=tmp_path, collection="by_torch", embed_backend="torch")
    physical = versions.ensure_registered(built)
    MilvusStore(versions.physical_settings(built, physical)).ensure_collection(384)
    other = built.model_copy(update={"embed_backend": "onnx-int8"})
    with pytest.raises(ConfigError, match="never mixed"):
        MilvusStore(other).ensure_collection(384, model_id(other))
    # An ingest or a query that asks for another backend (or a new default) uses the one the collection was built
    # with: its recorded model id says which.
    assert versions.physical_settings(other, physical).embed_backend == "torch"
    retriever = Retriever(other)
    retriever.check_model()
    assert retriever.query_embedder(physical)[1] == model_id(built)


@pytest.fixture(scope="module")
def default_embedder(tmp_path_factory) -> Embedder:
    return Embedder(Settings(home=tmp_path_factory.mktemp("default"), embed_backend="auto", device="cpu"))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(min_size=1, max_size=300), min_size=2, max_size=6), pick=st.integers(0, 5))
def test_a_query_vector_does_not_depend_on_the_queries_beside_it(default_embedder, texts, pick):
    """The default (int8) scales activations per batch; the query path must not, or a question's neighbours would
    change with whatever else the server was asked at the same moment (serving.batcher packs concurrent queries)."""
    pick %= len(texts)
    together = default_embedder.encode_queries(texts)
    alone = default_embedder.encode_queries([texts[pick]])
    assert default_embedder.batch_dependent
    assert np.array_equal(together[pick], alone[0])
