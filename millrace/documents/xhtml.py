"""Turn Tika's XHTML output into page-numbered plain text."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from millrace.documents.records import Page

# Tika marks PDF pages as <div class="page"> and slides as <div class="slide-content">.
_PAGE_CLASSES = {"page", "slide-content"}
_BLOCK = {"p", "div", "br", "h1", "h2", "h3", "h4", "h5", "h6", "li", "tr", "table", "ul", "ol",
          "pre", "blockquote", "section", "article", "title", "dt", "dd"}
_SKIP = {"head", "script", "style"}


class _PageCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pages: list[list[str]] = [[]]
        self.paged = False
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self._skip += 1
            return
        if tag == "div":
            if _PAGE_CLASSES & set((dict(attrs).get("class") or "").split()):
                # Text before the first marker (rare) stays page 0, so the n-th marker is always page n.
                self.pages.append([])
                self.paged = True
                return
        if tag in ("td", "th"):
            self.pages[-1].append("\t")
        elif tag in _BLOCK:
            self.pages[-1].append("\n")

    def handle_startendtag(self, tag, attrs):
        # Tika writes empty elements self-closed: an empty <div class="page"/> is still a page, <p/> still a break.
        self.handle_starttag(tag, attrs)
        if tag not in _SKIP:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if tag in _BLOCK:
            self.pages[-1].append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.pages[-1].append(data)


_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n+")
_SURROGATES = re.compile("[\ud800-\udfff]")


def scrub(text: str) -> str:
    """Lone surrogates (a mis-decoded UTF-16 file, a bad &#xD800; in a parser's output) made valid: the tokenizer,
    Milvus and JSON all refuse them."""
    return _SURROGATES.sub("\ufffd", text)


def clean_text(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


class XhtmlError(ValueError):
    """Markup the parser cannot read at all; the message says where."""


# A "<" with another "<" before any ">" opens no tag: left raw, html.parser rescans the rest of the input from each
# one (quadratic: 2 MB of "<a<a..." took minutes). Well-formed XHTML (all Tika writes) never has one.
_STRAY_LT = re.compile(r"<(?=[^<>]*(?:<|\Z))")


def xhtml_to_pages(xhtml: str) -> list[Page]:
    """Pages numbered from 1 when Tika marked them (text before the first marker is page 0), else one page 0."""
    collector = _PageCollector()
    try:
        collector.feed(_STRAY_LT.sub("&lt;", scrub(xhtml)))
        collector.close()
    except (AssertionError, AttributeError, ValueError) as exc:  # html.parser's own checks on declarations
        raise XhtmlError(f"unreadable XHTML: {type(exc).__name__}: {str(exc)[:200]}") from None
    texts = [clean_text("".join(parts)) for parts in collector.pages]
    if not collector.paged:
        return [Page(number=0, text="\n\n".join(t for t in texts if t))]
    preamble = [Page(number=0, text=texts[0])] if texts[0] else []
    return preamble + [Page(number=i, text=t) for i, t in enumerate(texts[1:], start=1)]
