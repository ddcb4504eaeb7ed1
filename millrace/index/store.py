"""The Milvus collection: creation and model checks, idempotent upserts, reads, deletes, aliases, one retry layer for
every call (its layout is millrace.index.schema, its searches millrace.index.searching)."""

from __future__ import annotations

import json
import time
from typing import Iterable, Sequence

import numpy as np

from millrace import registry
from millrace.config import ConfigError, Settings
from millrace.index.connect import (_BUILD, _SEARCH, GPU_INDEXES, LITE_INDEXES, NO_CLIENT_RETRY,  # noqa: F401
                                     SERVER_INDEXES, choose_index, connect, search_params)
from millrace.documents.records import Chunk, Hit
from millrace.index import schema as schema_module
from millrace.index.schema import SPARSE_FIELD, collection_schema
from millrace.index.searching import as_vector, search_collection
from millrace.retry import exception_chain, is_transient, with_retries

# Milvus answers at most 16,384 rows (offset + limit) to one query.
_QUERY_PAGE = 16384


class MilvusUnavailable(RuntimeError):
    """A Milvus call failed transiently through every retry (the server is down or restarting)."""


def _clip(value: str, max_bytes: int) -> str:
    raw = value.encode("utf-8", "replace")
    return value if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", "ignore")


def _not_loaded(exc: BaseException) -> bool:
    """Milvus' "collection not loaded" (merr.ErrCollectionNotLoaded), which a restarted or released collection answers."""
    return any("collection not loaded" in str(link).lower() for link in exception_chain(exc))


def _version(text: str) -> tuple[int, ...]:
    digits = text.lstrip("vV").split("-")[0].split(".")
    return tuple(int(d) for d in digits if d.isdigit())


class MilvusStore:
    def __init__(self, settings: Settings, collection: str | None = None):
        self.settings = settings
        self.collection = collection or settings.collection
        self.client = connect(settings)
        self.index_type = choose_index(settings)
        self._full_text: bool | None = None
        self._described: dict | None = None  # describe_collection of an existing collection (schema does not change)
        self._dense: dict | None = None  # search parameters of its vector index as built

    def call(self, op: str, *args, **kwargs):
        """One Milvus call through the one retry layer (pymilvus' own retries off, see NO_CLIENT_RETRY)."""
        method = getattr(self.client, op)

        def attempt():
            try:
                return method(*args, **kwargs, **NO_CLIENT_RETRY)
            except Exception as exc:
                if op == "load_collection" or not _not_loaded(exc):
                    raise
                # A restarted server reloads its collections in the background, for longer than a run's retries may
                # last on a big collection; load_collection joins that load and returns once it is done.
                self.client.load_collection(self.collection, **NO_CLIENT_RETRY)
                return method(*args, **kwargs, **NO_CLIENT_RETRY)

        try:
            return with_retries(attempt, self.settings.retry_delays, what=f"Milvus {op} on {self.collection}")
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Said once, in words, instead of pymilvus' "illegal connection params or server unavailable".
            raise MilvusUnavailable(
                f"Milvus at {self.settings.resolved_milvus_uri} did not answer `{op}` on {self.collection} after "
                f"{len(self.settings.retry_delays) + 1} tries ({type(exc).__name__}: {str(exc)[:200]}). What this "
                "run staged is rolled back now or by the next run; run again when Milvus is up "
                "(MILLRACE_RETRY_DELAYS sets how long a run waits)") from exc

    def describe(self) -> dict:
        if self._described is None:
            self._described = self.call("describe_collection", self.collection)
        return self._described

    def _max_bytes(self) -> dict[str, int]:
        """VARCHAR limits of this collection as created, so collections made with smaller limits still take writes."""
        limits = dict(schema_module.LIMITS)
        for f in self.describe()["fields"]:
            if f["name"] in limits and (f.get("params") or {}).get("max_length"):
                limits[f["name"]] = int(f["params"]["max_length"])
        return limits

    def collection_model(self) -> str | None:
        """The model id whose vectors this collection holds; None for one created before models were recorded."""
        if not self.exists():
            return None
        try:
            return str(json.loads(self.describe().get("description") or "")["millrace"]["model"])
        except (ValueError, KeyError, TypeError):
            return None

    def engine_has_bm25(self) -> bool:
        """BM25 Functions arrived in Milvus 2.5: milvus-lite 2.5 has them, the 2.3 standalone server does not."""
        if self.settings.milvus_is_lite:
            return True
        try:
            return _version(self.call("get_server_version")) >= (2, 5)
        except Exception:
            return False

    def has_full_text(self) -> bool:
        """Whether this collection was created with the BM25 field (collections from before it exist without)."""
        if self._full_text is None and self.exists():
            self._full_text = any(f["name"] == SPARSE_FIELD for f in self.describe()["fields"])
        return bool(self._full_text)

    def full_text_known(self) -> bool:
        """Whether has_full_text() would answer without asking Milvus."""
        return self._full_text is not None

    def close(self) -> None:
        self.client.close()

    def exists(self) -> bool:
        found = bool(self.call("has_collection", self.collection))
        if not found:
            self._described = self._full_text = self._dense = None  # dropped (or never there): forget what it was
        return found

    def ensure_collection(self, dim: int, model: str | None = None) -> None:
        """Create the collection for `dim`-d vectors of `model` (default: the configured model's id), or check that
        the existing one holds exactly those: vectors of two models are never mixed in one collection."""
        if model is None:
            from millrace.documents.embed import model_id

            model = model_id(self.settings)
        if self.exists():
            field = next(f for f in self.describe()["fields"] if f["name"] == "vector")
            have = int(field["params"]["dim"])
            if have != dim:
                raise ConfigError(f"collection {self.collection} holds {have}-d vectors but the model makes {dim}-d; "
                                  "use another --collection or drop this one")
            held = self.collection_model()
            if held is not None and held != model:
                raise ConfigError(f"collection {self.collection} holds vectors of model {held}, but this run embeds "
                                  f"with {model}; vectors of two models are never mixed in one collection. Ingest "
                                  "into a new collection instead (`--collection NAME`), or drop this one")
            return
        full_text = self.settings.full_text == "on" or (self.settings.full_text == "auto" and self.engine_has_bm25())
        if self.settings.full_text == "on" and not self.engine_has_bm25():
            raise ConfigError("MILLRACE_FULL_TEXT=on needs Milvus >= 2.5 (BM25 functions); this server is older. "
                              "Use MILLRACE_FULL_TEXT=auto to index without full-text search")
        schema, index = collection_schema(self.client, self.settings, self.index_type, dim, model, full_text)
        first = iter([True])

        def create() -> None:
            # A retry after a create whose answer was lost finds the collection there: done, not "already exists".
            if not next(first, False) and self.client.has_collection(self.collection, **NO_CLIENT_RETRY):
                return
            # Strong consistency: counts and reads right after a write must see it (reconciliation relies on it).
            self.client.create_collection(self.collection, schema=schema, index_params=index,
                                          consistency_level="Strong", **NO_CLIENT_RETRY)

        with_retries(create, self.settings.retry_delays, what=f"Milvus create_collection {self.collection}")
        self._described, self._full_text, self._dense = None, full_text, None

    def vector_index(self) -> dict:
        """The vector field's index as Milvus describes it (type, nlist, ...)."""
        return self.call("describe_index", self.collection, "vector")

    def dense_params(self) -> dict:
        """Search parameters for the index the collection has, which is not always the configured one (Milvus Lite
        re-indexes a collection by size: millrace.index.lite_index); read once, on the first search."""
        if self._dense is None:
            try:  # one try, not the retry layer's: with Milvus down the search itself waits out the retries once
                index = self.client.describe_index(self.collection, "vector", **NO_CLIENT_RETRY)
            except Exception:  # no collection (yet), or no Milvus: the search says which; nothing to remember
                return _SEARCH.get(self.index_type, {})
            self._dense = search_params(index)
        return self._dense

    def upsert(self, chunks: Iterable[Chunk], batch: int = 500, stored: set[str] | None = None) -> int:
        """Write chunks by primary key. With `stored` (the ids the collection holds for these documents, read just
        before) ids outside it are plainly inserted, which skips upsert's delete step (~30% of a Lite write)."""
        now, limits = int(time.time()), self._max_bytes()
        rows = [{"chunk_id": c.chunk_id, "doc_id": c.doc_id, "chunk_index": c.chunk_index,
                 "text": _clip(c.text, limits["text"]), "source_uri": _clip(c.source_uri, limits["source_uri"]),
                 "title": _clip(c.title, limits["title"]), "page": c.page, "content_hash": c.content_hash,
                 "ingested_at": now, "metadata": c.metadata, "vector": as_vector(c.vector)} for c in chunks]
        groups = [("upsert", rows)] if stored is None else [
            ("insert", [r for r in rows if r["chunk_id"] not in stored]),
            ("upsert", [r for r in rows if r["chunk_id"] in stored])]
        for op, group in groups:
            for i in range(0, len(group), batch):
                self._write(op, group[i:i + batch])
        return len(rows)

    def _write(self, op: str, part: list[dict]) -> None:
        # An insert is retried as an upsert: if the first one landed and only its answer was lost, a second insert
        # would store every row twice (Milvus does not deduplicate primary keys on insert).
        ops = iter([op])
        with_retries(lambda: getattr(self.client, next(ops, "upsert"))(self.collection, part, **NO_CLIENT_RETRY),
                     self.settings.retry_delays, what=f"Milvus {op} of {len(part)} rows into {self.collection}")

    def rows(self, doc_ids: Iterable[str] | None, fields: list[str]) -> Iterable[dict]:
        """Rows of the given documents (or all), paged: one query, not one per document."""
        doc_ids = sorted(set(doc_ids)) if doc_ids is not None else None
        if (doc_ids is not None and not doc_ids) or not self.exists():
            return
        expr = f"doc_id in {json.dumps(doc_ids)}" if doc_ids is not None else 'chunk_id != ""'
        if doc_ids is not None:
            # A Strong read waits out Milvus' time tick, and query_iterator makes three of them (setup, page, end):
            # the rows of a batch's documents come in one query, and only a full page needs the iterator.
            page = _QUERY_PAGE if "vector" not in fields else max(1, _QUERY_PAGE // 8)
            first = self.call("query", self.collection, filter=expr, output_fields=fields, limit=page)
            if len(first) < page:
                yield from first
                return
        it = self.call("query_iterator", self.collection, filter=expr, output_fields=fields, batch_size=2000)
        try:
            # A failed page leaves the iterator's cursor where it was (it moves after a page arrives): retry it.
            what = f"Milvus query page of {self.collection}"
            while page := with_retries(it.next, self.settings.retry_delays, what=what):
                yield from page
        finally:
            it.close()

    def chunk_ids(self, doc_ids: Iterable[str] | None = None) -> dict[str, set[str]]:
        """Chunk ids per document, for the given documents or all."""
        found: dict[str, set[str]] = {}
        for row in self.rows(doc_ids, ["chunk_id", "doc_id"]):
            found.setdefault(row["doc_id"], set()).add(row["chunk_id"])
        return found

    def vectors_by_hash(self, doc_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Stored vectors (1-D float32) of these documents keyed by chunk content hash, for embedding reuse."""
        rows = self.rows(doc_ids, ["content_hash", "vector"])
        return {row["content_hash"]: as_vector(row["vector"]) for row in rows}

    def delete_ids(self, ids: Iterable[str], batch: int = 1000) -> int:
        ids = sorted(ids)
        for i in range(0, len(ids), batch):
            part = ids[i:i + batch]
            self.call("delete", self.collection, ids=part)
        return len(ids)

    def delete_docs(self, keep: dict[str, set[str]]) -> int:
        """Remove every chunk of the given documents except their `keep` ids (the new version's)."""
        existing = self.chunk_ids(keep.keys())
        stale = set().union(*(ids - keep[doc] for doc, ids in existing.items())) if existing else set()
        return self.delete_ids(stale) if stale else 0

    def count(self, doc_id: str | None = None, consistency: str | None = None) -> int:
        """count(*) at the collection's level (Strong), or at `consistency` (what a Bounded reader would see)."""
        if not self.exists():
            return 0
        expr = f'doc_id == "{doc_id}"' if doc_id else ""
        level = {"consistency_level": consistency} if consistency else {}
        res = self.call("query", self.collection, filter=expr, output_fields=["count(*)"], **level)
        return int(res[0]["count(*)"])

    # Aliases (a Milvus server; milvus-lite 2.5.1 answers UNIMPLEMENTED to every alias call, see millrace.index.versions).
    def describe_alias(self, alias: str) -> str | None:
        """The collection `alias` points at, or None when there is no such alias."""
        from pymilvus.exceptions import MilvusException

        try:
            return str(self.call("describe_alias", alias)["collection_name"])
        except MilvusException as exc:
            if exc.code == 1600 or "alias not found" in str(exc.message).lower():  # merr.ErrAliasNotFound
                return None
            raise

    def point_alias(self, alias: str) -> None:
        """Make `alias` name this collection: alter_alias moves it in one step, so a reader never finds it missing."""
        current = self.describe_alias(alias)
        if current is None:
            self.call("create_alias", self.collection, alias)
        elif current != self.collection:
            self.call("alter_alias", self.collection, alias)

    def drop_alias(self, alias: str) -> None:
        self.call("drop_alias", alias)

    def load(self) -> None:
        """Load the collection into memory (a server searches only loaded collections; a no-op once loaded)."""
        self.call("load_collection", self.collection)

    def drop(self) -> None:
        """Drop the collection. Milvus 2.3 drops one that an alias names without complaint: callers check first."""
        if self.exists():
            self.call("drop_collection", self.collection)
        self._described = self._full_text = self._dense = None

    def missing(self) -> ConfigError:
        return ConfigError(f"collection {self.collection} does not exist: run `millrace ingest` first")

    def search(self, vector: Sequence[float] | np.ndarray, k: int = 10, expr: str = "", text: str | None = None,
               mode: str = "dense") -> list[Hit]:
        return self.search_many([vector], [text or ""], k, expr, mode)[0]

    def search_many(self, vectors: Sequence[Sequence[float]] | np.ndarray, texts: list[str], k: int = 10,
                    expr: str = "", mode: str = "dense", group_by_doc: bool = False, consistency: str | None = None
                    ) -> list[list[Hit]]:
        """Top-k chunks per query: `dense` (vectors), `bm25` (texts) or `hybrid` (both, fused by RRF).

        `group_by_doc` returns at most one chunk (the best) per document, for document-level ranking."""
        return search_collection(self, vectors, texts, k, expr, mode, group_by_doc, consistency)


def shared_store(settings: Settings, collection: str | None = None) -> MilvusStore:
    """This process's store for a collection: one client per Milvus URI, database and credentials (millrace.registry)."""
    name = collection or settings.collection
    key = ("milvus", settings.resolved_milvus_uri, settings.milvus_db, registry.digest(settings.milvus_token),
           settings.milvus_index, settings.milvus_metric, settings.full_text, name)
    return registry.shared(key, lambda: MilvusStore(settings, name))
