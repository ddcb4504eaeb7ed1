import json
import subprocess
import sys

import numpy as np
import pytest

from millrace.config import ConfigError, Settings
from millrace.documents.records import Chunk
from millrace.index.store import MilvusStore, choose_index

pytestmark = pytest.mark.integration


def chunks(doc: str, n: int, dim: int = 8, text: str = "t") -> list[Chunk]:
    out = []
    for i in range(n):
        v = [0.0] * dim
        v[i % dim] = 1.0
        out.append(Chunk(chunk_id=f"{doc}-{i:05d}-{text}", doc_id=doc, chunk_index=i, text=f"{text} {i}",
                         source_uri=f"file:///{doc}.txt", title=doc.upper(), page=i + 1, content_hash="h", vector=v))
    return out


@pytest.fixture()
def store(tmp_path):
    s = MilvusStore(Settings(home=tmp_path, collection="c"))
    s.ensure_collection(8)
    yield s
    s.close()


def test_upsert_is_idempotent_and_search_returns_citations(store):
    store.upsert(chunks("a", 5) + chunks("b", 3))
    store.upsert(chunks("a", 5))
    assert store.count() == 8 and store.count("a") == 5
    hit = store.search([0, 0, 1, 0, 0, 0, 0, 0], k=1)[0]
    assert (hit.doc_id, hit.page, hit.chunk_index, hit.title) in {("a", 3, 2, "A"), ("b", 3, 2, "B")}
    assert hit.source_uri.endswith(".txt") and hit.score > 0.99


def test_replacing_a_document_keeps_only_its_new_chunks(store):
    store.upsert(chunks("a", 5, text="old") + chunks("b", 2))
    new = chunks("a", 3, text="new")
    store.upsert(new)
    assert store.count("a") == 8  # both versions present between the write and the clean-up
    store.delete_docs({"a": {c.chunk_id for c in new}})
    assert store.chunk_ids(["a"]) == {"a": {c.chunk_id for c in new}}
    assert store.count("b") == 2


@pytest.mark.parametrize("page", [4, 7, 16384])
def test_rows_of_named_documents_are_all_read_whether_they_fit_one_query_or_not(store, monkeypatch, page):
    import millrace.index.store as store_module

    monkeypatch.setattr(store_module, "_QUERY_PAGE", page)  # a full first query must hand over to the iterator
    store.upsert(chunks("a", 7) + chunks("b", 3) + chunks("c", 2))
    assert store.chunk_ids(["a", "b"]) == {"a": {c.chunk_id for c in chunks("a", 7)},
                                           "b": {c.chunk_id for c in chunks("b", 3)}}
    assert set(store.vectors_by_hash(["c"])) == {"h"}
    assert store.chunk_ids([]) == {} and store.chunk_ids(["nobody"]) == {}


def test_index_types_are_validated_per_backend():
    assert choose_index(Settings()) == "FLAT"
    assert choose_index(Settings(milvus_uri="http://milvus:19530")) == "HNSW"
    assert choose_index(Settings(milvus_uri="http://gpu:19530", milvus_index="gpu_cagra")) == "GPU_CAGRA"
    with pytest.raises(ConfigError, match="GPU indexes need a GPU Milvus server"):
        choose_index(Settings(milvus_index="GPU_CAGRA"))
    with pytest.raises(ConfigError, match="cannot be built by Milvus Lite"):
        choose_index(Settings(milvus_index="HNSW"))
    with pytest.raises(ConfigError, match="unknown"):
        choose_index(Settings(milvus_uri="http://m:19530", milvus_index="MAGIC"))


def test_dimension_mismatch_is_refused(store):
    with pytest.raises(ConfigError, match="8-d vectors"):
        store.ensure_collection(384)


def test_unreachable_server_fails_with_what_to_do():
    from tests.conftest import free_port

    settings = Settings(milvus_uri=f"http://127.0.0.1:{free_port()}", retry_delays=[0.1, 0.1])
    with pytest.raises(ConfigError, match=r"cannot reach Milvus .* after 3 tries.*make server"):
        MilvusStore(settings)


def test_lite_data_open_in_another_process_is_a_clear_error(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pymilvus import MilvusClient; MilvusClient(uri=sys.argv[1]); "
        "print('open', flush=True); time.sleep(60)"), str(tmp_path / "milvus.db")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ConfigError, match="one process"):
            MilvusStore(Settings(home=tmp_path))
    finally:
        holder.kill()
        holder.wait()


def test_bm25_and_hybrid_find_an_exact_term_the_vectors_do_not_know(store):
    docs = chunks("a", 6, text="routine maintenance of the cooling loop")
    docs[4].text = "alarm code E4471 means the bearing sensor is unplugged"  # its vector points elsewhere
    store.upsert(docs + chunks("b", 4, text="quarterly budget review"))
    assert store.has_full_text()
    probe = [0.0] * 8
    probe[0] = 1.0  # nearest chunk by vector: a-00000
    dense = store.search(probe, k=2, text="E4471", mode="dense")
    assert {h.chunk_index for h in dense} == {0} and not any("E4471" in h.text for h in dense)
    bm25 = store.search(probe, k=3, text="what does E4471 mean", mode="bm25")
    assert bm25[0].text.startswith("alarm code E4471") and len(bm25) == 1  # no other chunk has those terms
    hybrid = store.search(probe, k=3, text="E4471", mode="hybrid")
    assert {hybrid[0].text, hybrid[1].text} >= {"alarm code E4471 means the bearing sensor is unplugged"}
    per_doc = store.search_many([probe], ["cooling loop budget"], k=10, mode="hybrid", group_by_doc=True)[0]
    assert sorted(h.doc_id for h in per_doc) == ["a", "b"]


def test_a_collection_without_the_bm25_field_refuses_hybrid_search(tmp_path):
    s = MilvusStore(Settings(home=tmp_path, collection="old", full_text="off"))
    s.ensure_collection(8)
    s.upsert(chunks("a", 2))
    assert not s.has_full_text()
    with pytest.raises(ConfigError, match="no BM25 field"):
        s.search([1.0] + [0.0] * 7, text="t", mode="hybrid")
    assert len(s.search([1.0] + [0.0] * 7, k=2)) == 2
    s.close()


def test_numpy_vectors_are_written_and_read_back_as_float32(store):
    docs = chunks("a", 3)
    for i, c in enumerate(docs):
        c.content_hash = f"h{i}"
        c.vector = np.asarray(c.vector, dtype=np.float32)
    store.upsert(docs, stored=set())  # plain inserts
    found = store.vectors_by_hash(["a"])
    assert sorted(found) == ["h0", "h1", "h2"]
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == (8,) for v in found.values())
    assert np.array_equal(found["h1"], docs[1].vector)
    matrix = np.eye(8, dtype=np.float32)[:2]  # what Embedder.encode returns: a 2-D float32 array
    hits = store.search_many(matrix, ["", ""], k=1)
    assert [h[0].chunk_index for h in hits] == [0, 1]


def test_the_collection_records_its_model_and_refuses_another(store):
    from millrace.documents.embed import model_id

    assert store.collection_model() == model_id(store.settings)
    described = json.loads(store.client.describe_collection("c")["description"])
    assert described == {"millrace": {"model": model_id(store.settings), "dim": 8}}
    store.ensure_collection(8)  # the same model again: fine
    with pytest.raises(ConfigError, match=r"holds vectors of model all-MiniLM-L6-v2@.*embeds with other@sha256:0123"
                                          r".*never mixed.*--collection NAME"):
        store.ensure_collection(8, model="other@sha256:0123456789abcdef")


def test_a_collection_from_before_model_ids_is_accepted(tmp_path):
    s = MilvusStore(Settings(home=tmp_path, collection="legacy", full_text="off"))
    schema = s.client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("chunk_id", pymilvus_types().VARCHAR, is_primary=True, max_length=128)
    schema.add_field("vector", pymilvus_types().FLOAT_VECTOR, dim=8)
    s.client.create_collection("legacy", schema=schema)
    assert s.collection_model() is None
    s.ensure_collection(8, model="anything@sha256:0000000000000000")
    s.close()


def pymilvus_types():
    from pymilvus import DataType

    return DataType


def test_long_encoded_names_fit_and_old_collections_clip_to_their_own_limit(tmp_path, monkeypatch):
    long_uri = "file:///" + "/".join(["%C3%9Cbersicht%20Mai%20" * 8] * 22) + ".docx"  # ~4 KB, percent-encoded
    assert 4000 < len(long_uri) < 8192
    new = MilvusStore(Settings(home=tmp_path, collection="new"))
    new.ensure_collection(8)
    docs = chunks("a", 1)
    docs[0].source_uri = long_uri
    new.upsert(docs)
    assert next(new.rows(["a"], ["source_uri"]))["source_uri"] == long_uri
    monkeypatch.setattr("millrace.index.schema.LIMITS", {"text": 65535, "source_uri": 2048, "title": 1024})
    new.collection = "old"  # created the way a version with the 2048-byte limit created it
    new.ensure_collection(8)
    monkeypatch.undo()
    new.upsert(docs)
    assert next(new.rows(["a"], ["source_uri"]))["source_uri"] == long_uri[:2048]
    new.close()


@pytest.mark.slow
def test_the_milvus_server_keeps_the_model_in_the_description(milvus_server):
    from millrace.documents.embed import model_id

    s = MilvusStore(Settings(milvus_uri=milvus_server, collection="described", retry_delays=[0.5]))
    s.ensure_collection(8)
    assert s.collection_model() == model_id(s.settings)
    with pytest.raises(ConfigError, match="holds vectors of model"):
        s.ensure_collection(8, model="other@sha256:0123456789abcdef")
    s.client.drop_collection("described")
    s.close()


@pytest.mark.slow
def test_a_released_collection_is_loaded_again_by_the_next_call_without_waiting_out_retries(milvus_server):
    # A restarted server answers "collection not loaded" until it has reloaded a collection, which can outlast a run's
    # retries; no retries here, so only the store's own load can make these calls succeed.
    s = MilvusStore(Settings(milvus_uri=milvus_server, collection="released", retry_delays=[]))
    s.ensure_collection(8)
    try:
        s.upsert(chunks("a", 5) + chunks("b", 3))
        assert s.count(consistency="Strong") == 8
        for call in (lambda: s.chunk_ids(["a"]), lambda: s.search([0, 0, 1, 0, 0, 0, 0, 0], k=1),
                     lambda: s.count(consistency="Strong")):
            s.client.release_collection("released")
            assert s.client.get_load_state("released")["state"].name == "NotLoad"
            assert call()
        assert s.chunk_ids(["a"]) == {"a": {c.chunk_id for c in chunks("a", 5)}}
    finally:
        s.client.drop_collection("released")
        s.close()
