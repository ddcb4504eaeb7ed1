import pytest

from millrace.documents.xhtml import clean_text, xhtml_to_pages

pytestmark = pytest.mark.unit


def test_pdf_pages_are_numbered_from_one():
    xhtml = ('<html><head><title>T</title><meta name="x" content="y"/></head><body>'
             '<div class="page"><p>first page</p></div><div class="page"><p>second</p><p>page</p></div></body></html>')
    pages = xhtml_to_pages(xhtml)
    assert [(p.number, p.text) for p in pages] == [(1, "first page"), (2, "second\n\npage")]


def test_unpaged_document_is_page_zero_and_skips_head_and_scripts():
    xhtml = "<html><head><title>Title here</title></head><body><h1>Head</h1><script>x=1</script><p>Body</p></body></html>"
    pages = xhtml_to_pages(xhtml)
    assert len(pages) == 1 and pages[0].number == 0
    assert pages[0].text == "Head\n\nBody"


def test_table_cells_are_separated_and_entities_decoded():
    pages = xhtml_to_pages("<body><table><tr><td>a &amp; b</td><td>c</td></tr><tr><td>d</td></tr></table></body>")
    assert pages[0].text.splitlines()[0].split() == ["a", "&", "b", "c"]
    assert "d" in pages[0].text


def test_slides_count_as_pages():
    xhtml = '<body><div class="slide-content"><p>one</p></div><div class="slide-content"><p>two</p></div></body>'
    assert [p.number for p in xhtml_to_pages(xhtml)] == [1, 2]


def test_clean_text_collapses_spaces_and_blank_runs():
    assert clean_text("a \t  b\n\n\n\n  c  ") == "a b\n\nc"
