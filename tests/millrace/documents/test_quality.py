import math

import pytest

from millrace.documents.quality import apply_gate, validate_chunks
from millrace.documents.records import BatchResult, Chunk, DocSummary

pytestmark = pytest.mark.integration  # real Great Expectations


def unit(dim=4, i=0):
    v = [0.0] * dim
    v[i % dim] = 1.0
    return v


def chunk(doc, i, text="Fine text about rivers.", vector=None, chunk_id=None):
    return Chunk(chunk_id=chunk_id or f"{doc}-{i}", doc_id=doc, chunk_index=i, text=text, source_uri=f"file:///{doc}",
                 content_hash=f"h{doc}{i}", vector=vector if vector is not None else unit(i=i))


def test_each_bad_row_quarantines_its_document_with_the_right_reason():
    chunks = [chunk("good", 0), chunk("good", 1),
              chunk("nan", 0, vector=[math.nan, 0, 0, 1]),
              chunk("empty", 0, text="   "),
              chunk("dupid", 0, chunk_id="same"), chunk("dupid", 1, chunk_id="same"),
              chunk("garbled", 0, text="\ufffd\ufffd\x01\x02 ok \ufffd\ufffd\ufffd"),
              chunk("dim", 0, vector=[1.0, 0.0]),
              chunk("norm", 0, vector=[3.0, 0, 0, 0]),
              chunk("rep", 0, text="same"), chunk("rep", 1, text="same"), chunk("rep", 2, text="same")]
    report = validate_chunks(chunks, dim=4, max_chars=1000)
    assert report.quarantined == {"nan": ["non_finite_vector"], "empty": ["text_length"],
                                  "dupid": ["duplicate_id"], "garbled": ["garbled_text"], "dim": ["vector_dim"],
                                  "norm": ["not_unit_norm"], "rep": ["duplicate_text"]}
    failed = {e["reason"] for e in report.expectations if not e["success"]}
    assert failed == {"non_finite_vector", "text_length", "duplicate_id", "garbled_text", "vector_dim",
                      "not_unit_norm", "duplicate_text"}


def test_gate_moves_bad_documents_out_and_keeps_the_rest():
    result = BatchResult(
        documents=[DocSummary(doc_id=d, source_uri=f"file:///{d}", fingerprint="f", content_hash="c", chunks=1)
                   for d in ("good", "nan")],
        chunks=[chunk("good", 0), chunk("nan", 0, vector=[math.inf, 0, 0, 0])])
    apply_gate(result, dim=4, max_chars=1000)
    assert [d.doc_id for d in result.documents] == ["good"] and [c.doc_id for c in result.chunks] == ["good"]
    (failure,) = result.failures
    assert (failure.doc_id, failure.stage, failure.reason) == ("nan", "quality", "non_finite_vector")


def test_clean_batch_passes_every_expectation():
    report = validate_chunks([chunk("a", i, text=f"River {i} runs.") for i in range(3)], dim=4, max_chars=1000)
    assert report.quarantined == {} and all(e["success"] for e in report.expectations)
    assert len(report.expectations) == 10


def test_one_odd_chunk_does_not_quarantine_a_long_document():
    chunks = [chunk("long", i, text=f"Normal paragraph {i} about the weir and its fish pass.") for i in range(30)]
    chunks.append(chunk("long", 30, text="\ufffd"))
    assert validate_chunks(chunks, dim=4, max_chars=1000).quarantined == {}
