"""Retrieval for serving: embed the query with the ingestion model, search Milvus (dense, or hybrid with BM25 where
the collection has it), return citable hits."""

from __future__ import annotations

from millrace.config import Settings
from millrace.embed import Embedder
from millrace.records import Hit
from millrace.store import MilvusStore


class Retriever:
    def __init__(self, settings: Settings, store: MilvusStore | None = None):
        self.settings = settings
        self.store = store or MilvusStore(settings)
        self.embedder = Embedder(settings)

    def mode(self, requested: str | None = None) -> str:
        """`auto` is hybrid where the collection has its BM25 field (better on SciFact: see BENCHMARKS.md)."""
        mode = requested or self.settings.search_mode
        if mode == "auto":
            return "hybrid" if self.store.has_full_text() else "dense"
        return mode

    def search(self, text: str, k: int = 10, mode: str | None = None) -> list[Hit]:
        mode = self.mode(mode)
        vector = self.embedder.encode([text])[0] if mode != "bm25" else [0.0]
        return self.store.search(vector, k, text=text, mode=mode)


def cite(hit: Hit) -> str:
    """A short human citation: file name and page when the format has pages."""
    name = hit.source_uri.rstrip("/").rsplit("/", 1)[-1]
    return f"{name} p.{hit.page}" if hit.page else name
