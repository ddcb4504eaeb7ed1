"""Retrieval for serving: embed the query with the ingestion model, search Milvus (dense, or hybrid with BM25 where
the collection has it), return citable hits."""

from __future__ import annotations

from millrace.config import ConfigError, Settings
from millrace.embed import Embedder, model_id
from millrace.records import Hit
from millrace.sources import display_name
from millrace.store import MilvusStore


class Retriever:
    def __init__(self, settings: Settings, store: MilvusStore | None = None):
        self.settings = settings
        self.store = store or MilvusStore(settings)
        self.embedder = Embedder(settings)
        self.model = model_id(settings)
        self._model_checked = False

    def mode(self, requested: str | None = None) -> str:
        """`auto` is hybrid where the collection has its BM25 field (better on SciFact: see BENCHMARKS.md)."""
        mode = requested or self.settings.search_mode
        if mode == "auto":
            return "hybrid" if self.store.has_full_text() else "dense"
        return mode

    def check_model(self) -> None:
        """Refuse to compare a query vector with vectors of another model: the scores would be meaningless, not an
        error anyone would notice. Collections from before models were recorded are taken on trust."""
        if self._model_checked:
            return
        held = self.store.collection_model()
        if held is not None and held != self.model:
            raise ConfigError(f"collection {self.store.collection} holds vectors of model {held}, but queries would be "
                              f"embedded with {self.model}; set MILLRACE_MODEL to the model the collection was "
                              "ingested with, or search a collection ingested with this model (--collection NAME)")
        self._model_checked = held is not None or self.store.exists()

    def search(self, text: str, k: int = 10, mode: str | None = None) -> list[Hit]:
        mode = self.mode(mode)
        if mode == "bm25":  # terms only: no query vector, so any model will do
            return self.store.search([0.0], k, text=text, mode=mode)
        self.check_model()
        return self.store.search(self.embedder.encode([text])[0], k, text=text, mode=mode)


def cite(hit: Hit) -> str:
    """A short human citation: the decoded file name and the page when the format has pages."""
    name = display_name(hit.source_uri)
    return f"{name} p.{hit.page}" if hit.page else name
