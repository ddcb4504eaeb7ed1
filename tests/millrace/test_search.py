"""Serving retrieval: citations name the file as its owner wrote it; queries never meet another model's vectors."""

import pytest

from millrace.config import ConfigError, Settings
from millrace.documents.records import Chunk, Hit
from millrace.index.store import MilvusStore
from millrace.search import Retriever, cite
from millrace.uris import path_to_uri, s3_uri


def hit(uri: str, page: int) -> Hit:
    return Hit(score=1.0, chunk_id="c", doc_id="d", source_uri=uri, title="t", page=page, chunk_index=0, text="x")


@pytest.mark.unit
def test_citations_show_the_decoded_file_name():
    assert cite(hit(path_to_uri("/data/café notes.txt"), 2)) == "café notes.txt p.2"
    assert cite(hit(s3_uri("docs", "team/audit report #3.pdf"), 0)) == "audit report #3.pdf"
    assert cite(hit("file:///data/corpus.jsonl#doc%2F7", 0)) == "corpus.jsonl#doc/7"


@pytest.fixture()
def store(tmp_path):
    s = MilvusStore(Settings(home=tmp_path, collection="c"))
    yield s
    s.close()


@pytest.mark.integration
def test_a_query_is_searched_with_the_collection_model(store):
    settings = store.settings
    store.ensure_collection(384)
    retriever = Retriever(settings, store)
    text = "New employees receive 27 days of paid annual leave."
    store.upsert([Chunk(chunk_id="a-0", doc_id="a", chunk_index=0, text=text, source_uri=path_to_uri("/d/hand book.pdf"),
                        title="Handbook", page=2, content_hash="h", vector=retriever.embedder.encode([text])[0])])
    [found] = retriever.search("How many days of paid leave?", k=1, mode="dense")
    assert found.chunk_id == "a-0" and cite(found) == "hand book.pdf p.2" and found.score > 0.5


@pytest.mark.integration
def test_a_collection_of_another_model_refuses_the_query(store):
    store.ensure_collection(384, model="minilm@sha256:0123456789abcdef")
    store.upsert([Chunk(chunk_id="a-0", doc_id="a", chunk_index=0, text="spillway gate audit", source_uri="file:///a",
                        content_hash="h", vector=[1.0] + [0.0] * 383)])
    retriever = Retriever(store.settings, store)
    with pytest.raises(ConfigError, match=r"holds vectors of model minilm@sha256:0123456789abcdef.*all-MiniLM-L6-v2@"
                                          r".*MILLRACE_MODEL"):
        retriever.search("anything", mode="dense")
    with pytest.raises(ConfigError, match="holds vectors of model"):
        retriever.search("anything", mode="hybrid")
    assert [h.chunk_id for h in retriever.search("spillway", mode="bm25")] == ["a-0"]  # terms only, no vectors
