"""Properties of the chunker over generated documents, with the real model's tokenizer: every chunk fits the window,
the chunks of a page cover its text in order (nothing lost beyond whitespace and the characters the tokenizer drops
anyway), ids are deterministic and unique, and pages stay in order."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from millrace.config import Settings
from millrace.documents.chunk import Chunker, chunk_id_for, load_tokenizer
from millrace.documents.records import Document, Page, sha256_text

pytestmark = pytest.mark.integration  # the real model's tokenizer

WORDS = ["turbine", "penstock", "the", "a", "of", "Riverbend", "2024", "3.5", "kW", "naïve", "Übersicht", "東京",
         "مرحبا", "😀", "x" * 40, "supercalifragilisticexpialidocious", "e\u0301", "ﬁ"]
SEPARATORS = [" ", "  ", "\n", "\n\n", "\n\n\n", ". ", "; ", ", ", "\t", "\u00a0", "\u2028", ""]

# Pieces a document is made of: words and separators mostly, with arbitrary code points (controls, format
# characters, unassigned ones) and long runs without any separator mixed in.
piece = st.one_of(st.sampled_from(WORDS), st.sampled_from(SEPARATORS), st.sampled_from(SEPARATORS),
                  st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
                  st.builds(lambda c, n: c * n, st.sampled_from(["a", "9", "é", "東", "-", "\x00"]),
                            st.integers(50, 600)))
page_text = st.lists(piece, max_size=120).map("".join)


@lru_cache(maxsize=None)
def chunker(size: int, overlap: int) -> Chunker:
    return Chunker(Settings(chunk_size=size, chunk_overlap=overlap))


def visible(text: str) -> str:
    """What the comparison keeps: no whitespace, and none of the control/format/unassigned characters the
    tokenizer's normaliser removes before it counts anything."""
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch)[0] != "C")


def assert_covers_in_order(page: str, pieces: list[str]) -> None:
    """Each chunk is found in the page at or after the previous one's start, starting no later than the previous
    one's end (overlap allowed, gaps not); the first starts at the page's start and the last ends at its end."""
    target = visible(page)
    start, end = 0, 0
    for i, text in enumerate(pieces):
        v = visible(text)
        if not v:
            continue
        candidates = [p for p in range(start, end + 1) if target.startswith(v, p)]
        assert candidates, f"chunk {i} {text[:60]!r} is not where the previous one ({start}..{end}) leaves off"
        start = max(candidates)
        end = max(end, start + len(v))
    assert end == len(target), f"text after position {end} of {len(target)} is in no chunk: {target[end:end + 60]!r}"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pages=st.lists(page_text, min_size=1, max_size=4), size=st.sampled_from([16, 40, 200]),
       overlap_share=st.sampled_from([0, 0.1, 0.4]), data=st.data())
def test_chunks_fit_the_window_and_cover_each_page_in_order(pages, size, overlap_share, data):
    numbers = sorted(data.draw(st.sets(st.integers(1, 10_000), min_size=len(pages), max_size=len(pages))))
    doc = Document(doc_id="doc-1", source_uri="file:///d.pdf", fingerprint="f", content_hash="h", title="T",
                   pages=[Page(number=n, text=t) for n, t in zip(numbers, pages)])
    splitter = chunker(size, int(size * overlap_share))
    chunks = splitter.split(doc)
    tokenizer = load_tokenizer(Settings())
    for c in chunks:
        # The transformers tokenizer, not the chunker's own counting path.
        assert len(tokenizer.tokenize(c.text)) <= size, (c.text, size)
        assert c.text and c.text == c.text.strip()
        assert c.content_hash == sha256_text(c.text)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert [c.chunk_id for c in chunks] == [chunk_id_for("doc-1", c.chunk_index, c.content_hash) for c in chunks]
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    assert [c.page for c in chunks] == sorted(c.page for c in chunks)
    for number, text in zip(numbers, pages):
        assert_covers_in_order(text, [c.text for c in chunks if c.page == number])
    again = splitter.split(doc.model_copy(deep=True))
    assert [(c.chunk_id, c.text, c.page) for c in again] == [(c.chunk_id, c.text, c.page) for c in chunks]


@settings(max_examples=60, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=()), min_size=1, max_size=300))
def test_any_code_points_chunk_without_error(text):
    """Lone surrogates included: a mis-decoded document can carry them and the tokenizer refuses them."""
    chunks = chunker(40, 4).split(Document(doc_id="d", source_uri="u", fingerprint="f", content_hash="h",
                                           pages=[Page(number=0, text=text)]))
    for c in chunks:
        c.text.encode("utf-8")  # valid text for Milvus and JSON, no surrogates left
        assert len(load_tokenizer(Settings()).tokenize(c.text)) <= 40


def test_a_lone_surrogate_does_not_stop_the_document():
    [chunk] = chunker(40, 4).split(Document(doc_id="d", source_uri="u", fingerprint="f", content_hash="h",
                                            pages=[Page(number=1, text="spillway \ud800gate")]))
    assert chunk.text == "spillway \ufffdgate"
