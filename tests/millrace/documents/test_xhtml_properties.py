"""Properties of the XHTML page splitter: the n-th page marker is page n whatever the markup around it, and any
input at all (unbalanced tags, entities, control characters, lone surrogates, huge attributes, deep nesting) gives
pages or an XhtmlError, never another exception."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given, settings, strategies as st

from millrace.documents.xhtml import XhtmlError, xhtml_to_pages

pytestmark = pytest.mark.unit

word = st.text(st.sampled_from("abcxyzÄé東0123"), min_size=1, max_size=8)
# Markup that carries no words of its own: how Tika (or a hostile producer) might wrap the text.
wrapper = st.sampled_from(["<p>{}</p>", "<b>{}</b>", "{}<br/>", "<p/>{}", "<table><tr><td>{}</td><td/></tr></table>",
                           "<div>{}</div>", "<span class=\"x\">{}</span>", "{}<p />", "<h1>{}</h1>", "<ul><li>{}",
                           "<div class=\"annotation\">{}</div>", "{}<img src=\"" + "a" * 5000 + "\"/>"])
entity_word = word.map(lambda w: html.escape(w) if len(w) % 2 else "".join(f"&#{ord(c)};" for c in w))
page_body = st.lists(st.tuples(wrapper, entity_word), max_size=12).map(
    lambda parts: " ".join(w.format(x) for w, x in parts))
marker = st.sampled_from(['<div class="page">{}</div>', '<div class="page"/>{}', "<div class='slide-content'>{}</div>",
                          '<div class="page extra">{}</div>'])


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


@settings(max_examples=300, deadline=None)
@given(bodies=st.lists(page_body, min_size=1, max_size=8), preamble=st.one_of(st.just(""), page_body),
       markers=st.data())
def test_the_nth_page_marker_is_page_n_with_that_pages_words(bodies, preamble, markers):
    pages_xhtml = []
    for i, body in enumerate(bodies):
        m = markers.draw(marker)
        if m.startswith('<div class="page"/>'):
            bodies[i] = body = ""  # a self-closed marker is an empty page: what follows it is the next page's text
        pages_xhtml.append(m.format(body))
    xhtml = f'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>t</title></head><body>{preamble}' \
            f'{"".join(pages_xhtml)}</body></html>'
    pages = xhtml_to_pages(xhtml)
    got = {p.number: words(p.text) for p in pages}
    expected = {n: words(html.unescape(re.sub(r"<[^>]*>", " ", b))) for n, b in enumerate(bodies, start=1)}
    expected[0] = words(html.unescape(re.sub(r"<[^>]*>", " ", preamble)))
    assert {n: w for n, w in got.items() if w} == {n: w for n, w in expected.items() if w}
    numbers = [p.number for p in pages]
    assert numbers == sorted(set(numbers))


@settings(max_examples=400, deadline=None)
@given(st.text(st.one_of(st.characters(blacklist_categories=()), st.sampled_from(list("<>/!?[]&;#=\"' -"))),
               max_size=200))
def test_any_input_gives_pages_or_a_clear_error(text):
    try:
        pages = xhtml_to_pages(text)
    except XhtmlError as exc:
        assert str(exc).startswith("unreadable XHTML")
        return
    assert [p.number for p in pages] == sorted({p.number for p in pages})
    for p in pages:
        p.text.encode("utf-8")  # no lone surrogates: Milvus, JSON and the tokenizer refuse them
        assert p.text == p.text.strip() and "\n\n\n" not in p.text


@pytest.mark.parametrize("xhtml,expected", [
    ("<![ x>after", XhtmlError),  # html.parser's AssertionError on a bad marked section
    ("<body>" + "<div>" * 100_000 + "deep" + "</div>" * 100_000 + "</body>", "deep"),
    ("<body>" + "<b><i>" * 100_000 + "unclosed", "unclosed"),
    ('<p class="' + "a" * 2_000_000 + '">big attribute</p>', "big attribute"),
    ("<a" * 300_000 + "<p>tail</p>", "tail"),  # quadratic in html.parser without the stray-"<" escape
    ("<p>\ud800lone &#xD800; &#0; \x00\x1f &nosuch; &amp;</p>", "\ufffdlone \ufffd \ufffd \x00\x1f &nosuch; &"),
])
def test_hostile_markup(xhtml, expected):
    if expected is XhtmlError:
        with pytest.raises(XhtmlError):
            xhtml_to_pages(xhtml)
        return
    [page] = xhtml_to_pages(xhtml)
    assert page.text.endswith(expected) and page.number == 0
