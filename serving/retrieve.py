"""Dense retrieval: embed the query with the ingestion model, search Milvus, return citable hits."""

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

    def search(self, text: str, k: int = 10) -> list[Hit]:
        vector = self.embedder.encode([text])[0]
        return self.store.search(vector, k)


def cite(hit: Hit) -> str:
    """A short human citation: file name and page when the format has pages."""
    name = hit.source_uri.rstrip("/").rsplit("/", 1)[-1]
    return f"{name} p.{hit.page}" if hit.page else name
