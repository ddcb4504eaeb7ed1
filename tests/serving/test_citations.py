"""Citation markers: however a generation is cut into deltas, the text, the kept markers and their spans are the
same as for the whole text; a marker naming no passage never reaches the client."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.citations import CitationFilter
from serving.schemas import Passage

pytestmark = pytest.mark.unit

PASSAGES = [Passage(index=i, score=1.0, chunk_id=f"c{i}", doc_id=f"d{i}", source_uri=f"file:///docs/d{i}.txt",
                    text="t") for i in (1, 2, 3)]
pieces = st.lists(st.sampled_from(["[1]", "[2]", "[3]", "[4]", "[0]", "[12]", "[", "]", "1", "2", " ", "word",
                                   "é", "[[", "[1", "3]", "\n"]), max_size=40)


def run(deltas: list[str]) -> CitationFilter:
    f = CitationFilter(PASSAGES)
    emitted = [f.feed(d)[0] for d in deltas] + [f.close()[0]]
    assert "".join(emitted) == f.text
    return f


@settings(max_examples=300, deadline=None)
@given(pieces, st.data())
def test_any_split_of_a_generation_gives_the_same_answer(parts, data):
    text = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    whole, split = run([text]), run(deltas)
    assert (split.text, split.spans) == (whole.text, whole.spans)
    for start, end, n in whole.spans:
        assert whole.text[start:end] == f"[{n}]" and 1 <= n <= 3
    kept = [int(m.group(1)) for m in re.finditer(r"\[(\d{1,3})\]", whole.text)]
    assert kept == [n for _, _, n in whole.spans]  # every marker left in the text is a valid, annotated one


def test_invalid_markers_are_dropped_and_citations_are_in_order_of_first_use():
    f = run(["The wheel [2] turns [9][2]", " and [1", "] the [0]mill."])
    assert f.text == "The wheel [2] turns [2] and [1] the mill."
    assert [c.index for c in f.citations()] == [2, 1] and f.dropped == 2
    assert [a["url_citation"]["url"] for a in f.annotations()] == ["file:///docs/d2.txt"] * 2 + ["file:///docs/d1.txt"]


def test_an_unfinished_marker_at_the_end_is_plain_text():
    assert run(["ends with [1"]).text == "ends with [1"


def test_a_bracket_before_a_newline_at_a_delta_end_is_not_held_in_place_of_the_newline():
    text = "[1] a [\n[1]"
    assert run([text[:8], text[8:]]).text == run([text]).text == text
