"""[n] markers in generated text: kept when n names a passage the LLM was given, dropped otherwise.

One filter serves streamed and whole answers alike (a whole answer is fed as one delta), so both forms of one
generation carry the same text, the same citations and the same marker spans. A marker split across deltas
(`[1` then `2]`) is held back until it is complete, so no delta ever shows a marker that is later dropped."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from serving.schemas import Citation, Passage, url_citation

MARKER = re.compile(r"\[(\d{1,3})\]")
# A tail that may still become a marker. \Z, not $: $ also matches before a final newline, which held back "[" of
# "[\n" and cut the newline in its place.
_PARTIAL = re.compile(r"\[\d{0,3}\Z")


def citation_of(passage: Passage) -> Citation:
    return Citation(index=passage.index, chunk_id=passage.chunk_id, doc_id=passage.doc_id,
                    source_uri=passage.source_uri, title=passage.title, page=passage.page)


@dataclass
class CitationFilter:
    passages: list[Passage]
    text: str = ""  # everything emitted so far
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, n) of each kept marker
    dropped: int = 0
    _held: str = ""

    def _valid(self, n: int) -> bool:
        return 1 <= n <= len(self.passages)

    def _clean(self, chunk: str, emit_tail: bool) -> tuple[str, list[tuple[int, int, int]]]:
        out, spans, pos = [], [], 0
        base = len(self.text)
        for m in MARKER.finditer(chunk):
            out.append(chunk[pos:m.start()])
            n = int(m.group(1))
            if self._valid(n):
                start = base + sum(map(len, out))
                spans.append((start, start + len(m.group(0)), n))
                out.append(m.group(0))
            else:
                self.dropped += 1
                # Removing `[9]` from `[[9]3]` would forge a `[3]`: where the text before it could open a marker,
                # a space takes its place.
                if _PARTIAL.search((self.text[-4:] + "".join(out))[-4:]):
                    out.append(" ")
            pos = m.end()
        rest = chunk[pos:]
        held = "" if emit_tail else (_PARTIAL.search(rest).group(0) if _PARTIAL.search(rest) else "")
        out.append(rest[: len(rest) - len(held)])
        self._held = held
        return "".join(out), spans

    def feed(self, delta: str) -> tuple[str, list[tuple[int, int, int]]]:
        """The part of `held + delta` that is safe to emit now, and the spans of the markers in it."""
        emitted, spans = self._clean(self._held + delta, emit_tail=False)
        self.text += emitted
        self.spans += spans
        return emitted, spans

    def close(self) -> tuple[str, list[tuple[int, int, int]]]:
        """The held tail at the end of the stream: an unfinished `[12` is plain text."""
        emitted, spans = self._clean(self._held, emit_tail=True)
        self.text += emitted
        self.spans += spans
        return emitted, spans

    def citations(self) -> list[Citation]:
        """One entry per cited passage, in order of first citation."""
        seen: dict[int, Citation] = {}
        for _, _, n in self.spans:
            seen.setdefault(n, citation_of(self.passages[n - 1]))
        return list(seen.values())

    def annotations(self) -> list[dict[str, Any]]:
        return [url_citation(s, e, citation_of(self.passages[n - 1])) for s, e, n in self.spans]
