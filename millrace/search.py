"""Retrieval for serving: embed the query with the ingestion model, search Milvus (dense, or hybrid with BM25 where
the collection has it), return citable hits.

`settings.collection` is the logical name; each search resolves the physical collection serving it now (the alias on
a server, the ledger on Lite: millrace.index.versions) and searches that one by name, so a rebuild's swap moves the next
search and never a search in flight, and every hit says which physical collection served it."""

from __future__ import annotations

from millrace import clients
from millrace.config import ConfigError, Settings
from millrace.documents.embed import Embedder, model_id
from millrace.documents.records import Hit
from millrace.index import versions
from millrace.index.store import MilvusStore
from millrace.uris import display_name


class Retriever:
    def __init__(self, settings: Settings, store: MilvusStore | None = None):
        """`store`: reused whenever the collection it names is the one serving (tests bring their own)."""
        self.settings = settings
        self.embedder = Embedder(settings)
        self.model = model_id(settings)
        self._given = store
        self._checked: set[str] = set()  # physical collections whose model matches their query embedder
        self._embedders: dict[str, tuple[Embedder, str]] = {}  # physical -> its pinned model's embedder and id
        self.store: MilvusStore = store or self.resolve()  # the collection serving now; then, of the last search

    def resolve(self) -> MilvusStore:
        """The store of the physical collection serving `settings.collection` now."""
        physical = versions.active_physical(self.settings)
        if self._given is not None and self._given.collection == physical:
            self.store = self._given
        else:
            self.store = clients.milvus_store(self.settings, physical)
        return self.store

    def mode(self, requested: str | None = None, store: MilvusStore | None = None) -> str:
        """`auto` is hybrid where the collection has its BM25 field (better on SciFact: see BENCHMARKS.md)."""
        mode = requested or self.settings.search_mode
        if mode == "auto":
            return "hybrid" if (store or self.resolve()).has_full_text() else "dense"
        return mode

    def query_embedder(self, physical: str) -> tuple[Embedder, str]:
        return self._embedder(physical)

    def _embedder(self, physical: str) -> tuple[Embedder, str]:
        """The query embedder for a physical collection: a rebuild may have pinned another model for it."""
        if physical not in self._embedders:
            pinned = versions.physical_settings(self.settings, physical)  # model and backend it was built with
            pinned_id = model_id(pinned)
            self._embedders[physical] = ((self.embedder, self.model) if pinned_id == self.model else
                                         (Embedder(pinned), pinned_id))
        return self._embedders[physical]

    def model_checked(self, store: MilvusStore) -> bool:
        """Whether `check_model` already passed for this collection (then it does no I/O)."""
        return store.collection in self._checked

    def check_model(self, store: MilvusStore | None = None) -> None:
        """Refuse to compare a query vector with vectors of another model: the scores would be meaningless, not an
        error anyone would notice. Collections from before models were recorded are taken on trust."""
        store = store or self.resolve()
        if store.collection in self._checked:
            return
        held, (_, model) = store.collection_model(), self._embedder(store.collection)
        if held is not None and held != model:
            raise ConfigError(f"collection {store.collection} holds vectors of model {held}, but queries would be "
                              f"embedded with {model}; set MILLRACE_MODEL to the model the collection was "
                              "ingested with, or search a collection ingested with this model (--collection NAME)")
        if held is not None or store.exists():
            self._checked.add(store.collection)

    def _search(self, store: MilvusStore, text: str, k: int, mode: str | None) -> list[Hit]:
        mode = self.mode(mode, store)
        if mode == "bm25":  # terms only: no query vector, so any model will do
            return store.search([0.0], k, text=text, mode=mode)
        self.check_model(store)
        if not self.model_checked(store):
            # No collection (check_model found none): said before searching, which Milvus Lite would answer with
            # an error line of its own on the terminal ("Can not find ...'s schema").
            raise store.missing()
        return store.search(self._embedder(store.collection)[0].encode_queries([text])[0], k, text=text, mode=mode)

    def search(self, text: str, k: int = 10, mode: str | None = None) -> list[Hit]:
        store = self.resolve()
        try:
            return self._search(store, text, k, mode)
        except Exception:
            # Dropped between resolving and searching (a rebuild's grace period ended): resolve once more.
            try:
                moved = not store.exists() and self.resolve().collection != store.collection
            except Exception:  # Milvus unreachable: the search's own error says more
                moved = False
            if not moved:
                raise
            return self._search(self.store, text, k, mode)


def cite(hit: Hit) -> str:
    """A short human citation: the decoded file name and the page when the format has pages."""
    name = display_name(hit.source_uri)
    return f"{name} p.{hit.page}" if hit.page else name
