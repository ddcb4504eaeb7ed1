"""Properties of build_document's metadata handling: whatever types and sizes a parser or a tika-server's JSON puts
in the metadata (lists, numbers, None, nested values, huge or control-laden strings), the document gets bounded
one-line strings and a sane page count, or a per-document ExtractError, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from millrace.documents.extract import ExtractError, build_document
from millrace.documents.records import SourceObject

pytestmark = pytest.mark.unit

KEYS = ["dc:title", "title", "Content-Type", "dc:language", "xmpTPg:NPages", "meta:page-count", "meta:slide-count",
        "dc:creator", "dcterms:created", "dcterms:modified", "Content-Encoding", "dc:subject", "X-TIKA:Parsed-By",
        "other"]
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.builds(lambda: 10 ** 5000), st.floats(), st.text(st.characters(blacklist_categories=())),
                   st.sampled_from(["", "  ", "\n\t", "²", "١٢", "9" * 5000, "3, 3", "-4", "application/pdf; x=y",
                                    "x" * 100_000, "a\nb\rc\x00d\u2028e"]))
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=8)
OBJ = SourceObject.make("file:///data/report%20final.pdf", 10, "f")


def one_line(text: str, limit: int) -> None:
    assert isinstance(text, str) and len(text) <= limit
    assert text == text.strip() and not any(ch in text for ch in "\n\r\x00\u2028")
    text.encode("utf-8")


@settings(max_examples=400, deadline=None)
@given(meta=st.dictionaries(st.sampled_from(KEYS), value, max_size=len(KEYS)),
       text=st.sampled_from(["<p>body text</p>", '<div class="page"><p>one</p></div>', ""]))
def test_metadata_of_any_shape_gives_bounded_fields(meta, text):
    try:
        doc = build_document(OBJ, b"data", text, meta)
    except ExtractError as exc:
        assert exc.reason in ("no_text", "unsupported") and not text
        return
    one_line(doc.title, 500)
    assert doc.title  # never empty: the file name stands in
    one_line(doc.content_type, 255)  # the ledger's column is String(255)
    one_line(doc.language, 16)
    assert isinstance(doc.page_count, int) and 0 <= doc.page_count < 2 ** 31
    for v in doc.metadata.values():
        assert isinstance(v, str) and len(v) <= 500
    doc.model_dump_json()  # what the ledger and Dask serialise


@pytest.mark.parametrize("meta,field,expected", [
    ({"xmpTPg:NPages": "²"}, "page_count", 0),  # str.isdigit() says yes, int() says no
    ({"xmpTPg:NPages": "9" * 5000}, "page_count", 0),  # over int()'s 4300-digit limit
    ({"xmpTPg:NPages": 12}, "page_count", 12),
    ({"dc:title": 10 ** 5000}, "title", "report final.pdf"),  # str() refuses ints past 4300 digits
    ({"dc:creator": [10 ** 5000, "Ann"]}, "metadata", {"dc:creator": "Ann"}),  # tika-server JSON carries numbers
    ({"dc:title": [None, "Real title"]}, "title", "Real title"),
    ({"dc:title": ["  ", "Second"]}, "title", "Second"),
    ({"dc:title": "Line one\n\x00line two"}, "title", "Line one line two"),
    ({"dc:title": None}, "title", "report final.pdf"),
    ({"Content-Type": ["text/plain; charset=UTF-8", "text/html"]}, "content_type", "text/plain"),
    ({"Content-Type": "text/" + "x" * 1000}, "content_type", ("text/" + "x" * 1000)[:255]),
    ({"dc:language": ["de", "en"]}, "language", "de"),
])
def test_awkward_metadata_values(meta, field, expected):
    doc = build_document(OBJ, b"data", "<p>body</p>", meta)
    assert getattr(doc, field) == expected


def test_unreadable_markup_is_a_corrupt_document():
    with pytest.raises(ExtractError) as info:
        build_document(OBJ, b"data", "<![ x>", {})
    assert info.value.reason == "corrupt" and "unreadable XHTML" in info.value.detail
