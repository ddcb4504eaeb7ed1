"""Retrieval for the API: the CLI's retrieval (millrace.search.Retriever: hybrid where the collection has BM25, the
model check, the alias or ledger resolution), with query embeddings micro-batched across requests, Milvus calls in
worker threads, and results cached under the index version."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import orjson
from anyio import to_thread

from millrace import clients
from millrace.config import ConfigError
from millrace.index import versions
from millrace.index.store import MilvusStore
from millrace.ledger.change_token import LedgerWatch
from millrace.observe import telemetry
from millrace.search import Retriever
from millrace.uris import canonical_source_uri, s3_uri
from serving.batcher import MicroBatcher
from serving.cache import MemoryCache, digest
from serving.config import ServeSettings
from serving.errors import ServingError
from serving.metrics import Metrics
from serving.schemas import Filter, Passage


ALIAS_TTL_S = 1.0
SERVED_MEMO = 4096  # still_served answers kept at most (a new token, or a full memo, starts it afresh)


@dataclass
class Snapshot:
    """What one request reads: the physical collection serving now, and the version its cache entries carry."""

    store: MilvusStore
    version: str


def canonical_prefix(prefix: str) -> str:
    """A source prefix as the index spells source URIs: percent-encoded, resolved (`/data/Q1 plans/` and
    `file:///data/Q1%20plans/` are the same prefix); a trailing slash is kept, so a folder does not match its
    siblings (`reports/` does not match `reports-old/`)."""
    if prefix.startswith("s3://"):
        bucket, _, key = prefix[len("s3://"):].partition("/")
        return s3_uri(bucket, key)
    uri = canonical_source_uri(prefix)
    return uri + "/" if prefix.endswith("/") and not uri.endswith("/") else uri


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def filter_expr(f: Filter | None) -> tuple[str, str | None]:
    """A Milvus boolean expression for the filter, and the exact source prefix to check hits against (LIKE's `_` and
    `%` are wildcards in Milvus, so a prefix holding them matches a superset; hits are checked exactly after)."""
    if f is None:
        return "", None
    parts, prefix = [], None
    if f.source_prefix:
        prefix = canonical_prefix(f.source_prefix)
        parts.append(f'source_uri like "{_quote(prefix)}%"')
    if f.content_type:
        types = [f.content_type] if isinstance(f.content_type, str) else f.content_type
        if types:
            parts.append("(" + " or ".join(f'metadata["content_type"] like "{_quote(t)}%"' for t in types) + ")")
    return " and ".join(parts), prefix


class RetrievalService:
    def __init__(self, settings: ServeSettings, metrics: Metrics, cache):
        self.settings, self.metrics, self.cache = settings, metrics, cache
        self.retriever = Retriever(settings)
        self.ledger = clients.ledger(settings)
        self._batchers: dict[str, MicroBatcher] = {}
        self.watch = LedgerWatch(settings.resolved_ledger_url)
        # The last snapshot, the ledger's token it was read under, and when (monotonic): reused while nothing has
        # committed to the ledger. On a server the alias is Milvus' own state, so there it is also read again at
        # least once a second (a swap that an operator makes by hand is seen within that second).
        self._last: tuple[Snapshot, int, float] | None = None
        # still_served's answers, kept while the ledger's token stays the same: (token, collection, answers).
        self._served: tuple[int, str, dict[tuple[str, ...], bool]] | None = None

    @staticmethod
    def serving_collection(settings: ServeSettings) -> str:
        return versions.active_physical(settings)

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()
        self.watch.close()

    async def _io(self, fn, *args):
        return await to_thread.run_sync(fn, *args)

    def _snapshot(self) -> Snapshot:
        store = self.retriever.resolve()
        return Snapshot(store, f"{store.collection}@{self.ledger.index_version(store.collection)}")

    async def snapshot(self) -> Snapshot:
        t0 = time.perf_counter()
        try:
            # The token is read before the ledger: a commit between the two makes the next token differ, so a
            # snapshot is never kept past a commit it did not see.
            token = self.watch.token()
            if token is not None and self._last is not None and self._last[1] == token and (
                    not versions.has_aliases(self.settings) or time.monotonic() - self._last[2] < ALIAS_TTL_S):
                return self._last[0]
            snap = await self._io(self._snapshot)
            self._last = (snap, token, time.monotonic()) if token is not None else None
            return snap
        finally:
            self.metrics.observe("index_version", time.perf_counter() - t0)

    async def mode(self, snap: Snapshot, mode: str | None) -> str:
        """The search mode; a thread hop only the first time `auto` asks whether the collection has BM25."""
        if (mode or self.settings.search_mode) != "auto" or snap.store.full_text_known():
            return self.retriever.mode(mode, snap.store)
        return await self._io(self.retriever.mode, mode, snap.store)

    async def embed(self, snap: Snapshot, query: str) -> np.ndarray:
        """The query vector with the model of the collection serving now; a model mismatch is refused (409)."""
        try:
            if not self.retriever.model_checked(snap.store):  # a thread hop only until it passed once
                await self._io(self.retriever.check_model, snap.store)
        except ConfigError as exc:
            raise ServingError(409, "model_mismatch", str(exc)) from exc
        if not self.retriever.model_checked(snap.store):
            # check_model found no collection: the search's own 404, without the search, which Milvus Lite would
            # also answer with an error line of its own on the server's terminal.
            raise ServingError(404, "index", str(snap.store.missing()))
        embedder, model = self.retriever.query_embedder(snap.store.collection)
        if model not in self._batchers:
            self._batchers[model] = MicroBatcher(embedder.encode_queries, on_batch=self.metrics.embed_batch.observe)
        t0 = time.perf_counter()
        with telemetry.span("embed", model=model):
            vector = await self._batchers[model].embed(query)
        self.metrics.observe("embed", time.perf_counter() - t0)
        return vector

    async def search(self, snap: Snapshot, query: str, vector: np.ndarray | None, k: int, mode: str,
                     flt: Filter | None) -> list[Passage]:
        expr, prefix = filter_expr(flt)
        t0 = time.perf_counter()
        try:
            with telemetry.span("milvus.search", collection=snap.store.collection, k=k, mode=mode) as span:
                hits = await self._io(lambda: snap.store.search(vector if vector is not None else [0.0], k, expr,
                                                                 query, mode))
                span.set_attribute("millrace.hits", len(hits))
        except ConfigError as exc:
            raise ServingError(404 if "does not exist" in str(exc) else 409, "index", str(exc)) from exc
        finally:
            self.metrics.observe("search", time.perf_counter() - t0)
        if prefix is not None:
            hits = [h for h in hits if h.source_uri.startswith(prefix)]
        return [Passage(index=i, score=h.score, chunk_id=h.chunk_id, doc_id=h.doc_id, source_uri=h.source_uri,
                        title=h.title, page=h.page, text=h.text) for i, h in enumerate(hits, 1)]

    async def still_served(self, snap: Snapshot, doc_ids: list[str]) -> bool:
        """Whether every document a cached result cites is still served: a deleted one is never cited from a cache,
        even in the moment between its deletion and the end of the run that deleted it."""
        if not doc_ids:
            return True
        # A deletion is a commit to the ledger, so an answer given under the same token still holds: a cache hit
        # then costs no ledger read and no thread hop. The token is read before the ledger, so an answer is never
        # kept under a token older than what it read.
        token, collection, key = self.watch.token(), snap.store.collection, tuple(doc_ids)
        memo = self._served
        if token is not None and memo is not None and memo[:2] == (token, collection) and key in memo[2]:
            return memo[2][key]
        held = await self._io(self.ledger.indexed_ids, collection, doc_ids)
        served = set(doc_ids) <= held
        if token is not None:
            if memo is None or memo[:2] != (token, collection) or len(memo[2]) >= SERVED_MEMO:
                memo = self._served = (token, collection, {})
            memo[2][key] = served
        return served

    # --- cache -----------------------------------------------------------------------------------------------

    async def _cache_call(self, fn, *args):
        if not self.settings.cache:
            return None
        try:
            return fn(*args) if isinstance(self.cache, MemoryCache) else await self._io(fn, *args)
        except Exception:  # a cache failure is a miss, never a failed request
            self.metrics.errors.labels("cache").inc()
            return None

    async def cached(self, snap: Snapshot, kind: str, key: str) -> dict | None:
        raw = await self._cache_call(self.cache.get, snap.version, key)
        return await self._verified(snap, kind, "exact", raw)

    async def _verified(self, snap: Snapshot, kind: str, cache: str, raw: bytes | None) -> dict | None:
        value = orjson.loads(raw) if raw else None
        if value is not None and not await self.still_served(snap, value.get("doc_ids", [])):
            value = None
        self.metrics.cache.labels(f"{cache}_{kind}", "hit" if value is not None else "miss").inc()
        return value

    async def remember(self, snap: Snapshot, key: str, value: dict) -> None:
        await self._cache_call(self.cache.put, snap.version, key, orjson.dumps(value))

    async def semantic(self, snap: Snapshot, scope: str, vector: np.ndarray) -> dict | None:
        if not self.settings.semantic_cache:
            return None
        raw = await self._cache_call(self.cache.semantic_get, snap.version, scope, vector,
                                     self.settings.semantic_threshold)
        return await self._verified(snap, "answer", "semantic", raw)

    async def remember_semantic(self, snap: Snapshot, scope: str, vector: np.ndarray, value: dict) -> None:
        if self.settings.semantic_cache:
            await self._cache_call(self.cache.semantic_put, snap.version, scope, vector, orjson.dumps(value))


def request_key(*parts) -> str:
    return digest(*parts)


async def gather_ready(service: RetrievalService) -> dict:
    """Milvus reachable and the serving collection loaded (a search now would not wait for a load)."""
    def check() -> dict:
        store = service.retriever.resolve()
        if not store.exists():
            raise ServingError(503, "not_ready", f"collection {store.collection} does not exist yet: run an ingest")
        state = store.client.get_load_state(store.collection)
        if "NotLoad" in str(state.get("state", state)):
            # Created after this process started (a first ingest), or released: serving means loaded.
            store.load()
            state = store.client.get_load_state(store.collection)
        if "Loaded" not in str(state.get("state", state)):
            raise ServingError(503, "not_ready", f"collection {store.collection} is not loaded ({state})")
        return {"collection": store.collection, "loaded": True}

    return await asyncio.wait_for(to_thread.run_sync(check), timeout=10)
