import pytest

from millrace.config import ConfigError, Settings
from millrace.documents.chunk import Chunker, load_tokenizer
from millrace.documents.records import Document, Page

pytestmark = pytest.mark.integration  # the real model's tokenizer


def doc(pages: list[tuple[int, str]]) -> Document:
    return Document(doc_id="d1", source_uri="file:///x.pdf", fingerprint="f", content_hash="h", title="X",
                    pages=[Page(number=n, text=t) for n, t in pages])


def test_chunks_fit_the_model_window_and_carry_citation_fields():
    settings = Settings(chunk_size=64, chunk_overlap=8)
    text = " ".join(f"Sentence number {i} talks about turbines and rivers." for i in range(200))
    chunks = Chunker(settings).split(doc([(1, text), (2, "A short second page.")]))
    tok = load_tokenizer(settings)
    assert len(chunks) > 5
    assert all(len(tok.tokenize(c.text)) <= 64 for c in chunks)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].page == 2 and chunks[0].page == 1
    assert {c.source_uri for c in chunks} == {"file:///x.pdf"} and {c.title for c in chunks} == {"X"}


def test_text_without_separators_is_still_cut_to_size():
    settings = Settings(chunk_size=50, chunk_overlap=0)
    chunks = Chunker(settings).split(doc([(0, "x" * 5000 + "9" * 3000)]))
    tok = load_tokenizer(settings)
    assert chunks and all(len(tok.tokenize(c.text)) <= 50 for c in chunks)


def test_chunk_ids_are_deterministic_and_change_with_text():
    settings = Settings()
    a = Chunker(settings).split(doc([(0, "Alpha beta gamma.")]))
    b = Chunker(settings).split(doc([(0, "Alpha beta gamma.")]))
    c = Chunker(settings).split(doc([(0, "Alpha beta delta.")]))
    assert [x.chunk_id for x in a] == [x.chunk_id for x in b]
    assert a[0].chunk_id != c[0].chunk_id and a[0].chunk_id.startswith("d1-00000-")


def test_overlap_must_be_smaller_than_size():
    with pytest.raises(ConfigError, match="overlap"):
        Chunker(Settings(chunk_size=32, chunk_overlap=32))
