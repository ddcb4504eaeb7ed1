"""Turn Tika's XHTML output into page-numbered plain text."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from millrace.records import Page

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
                if not self.paged and not "".join(self.pages[-1]).strip():
                    self.pages[-1] = []  # text before the first page marker is usually empty
                else:
                    self.pages.append([])
                self.paged = True
                return
        if tag in ("td", "th"):
            self.pages[-1].append("\t")
        elif tag in _BLOCK:
            self.pages[-1].append("\n")

    def handle_startendtag(self, tag, attrs):
        if tag == "br":
            self.pages[-1].append("\n")

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


def clean_text(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def xhtml_to_pages(xhtml: str) -> list[Page]:
    """Pages numbered from 1 when Tika marked them, else one page numbered 0."""
    collector = _PageCollector()
    collector.feed(xhtml)
    collector.close()
    texts = [clean_text("".join(parts)) for parts in collector.pages]
    if not collector.paged:
        return [Page(number=0, text="\n\n".join(t for t in texts if t))]
    return [Page(number=i, text=t) for i, t in enumerate(texts, start=1)]
