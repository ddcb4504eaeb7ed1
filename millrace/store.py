"""The Milvus collection: schema, index choice per backend, idempotent upserts, search."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Iterable

from millrace.config import ConfigError, Settings
from millrace.records import Chunk, Hit
from millrace.retry import with_retries

LITE_INDEXES = {"FLAT", "IVF_FLAT", "AUTOINDEX"}  # milvus-lite 2.5 rejects or cannot build the rest
GPU_INDEXES = {"GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE"}
SERVER_INDEXES = {"FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "SCANN", "DISKANN", "AUTOINDEX"} | GPU_INDEXES

_BUILD = {"HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 128}, "IVF_SQ8": {"nlist": 128},
          "IVF_PQ": {"nlist": 128, "m": 16}, "SCANN": {"nlist": 128}, "GPU_IVF_FLAT": {"nlist": 128},
          "GPU_IVF_PQ": {"nlist": 128, "m": 16}, "GPU_CAGRA": {"intermediate_graph_degree": 64, "graph_degree": 32}}
_SEARCH = {"HNSW": {"ef": 64}, "IVF_FLAT": {"nprobe": 16}, "IVF_SQ8": {"nprobe": 16}, "IVF_PQ": {"nprobe": 16},
           "SCANN": {"nprobe": 16}, "GPU_IVF_FLAT": {"nprobe": 16}, "GPU_IVF_PQ": {"nprobe": 16},
           "GPU_CAGRA": {"itopk_size": 64}}

OUTPUT_FIELDS = ["doc_id", "chunk_index", "text", "source_uri", "title", "page"]
SPARSE_FIELD = "sparse"  # BM25 term weights Milvus derives from `text` (a Function), for full-text and hybrid search
ANALYZER = {"type": "english"}  # standard tokenizer, lowercase, English stemming and stop words
RRF_K = 60  # the usual reciprocal-rank-fusion constant (Cormack et al. 2009)
_LIMITS = {"text": 65535, "source_uri": 2048, "title": 1024}


def _clip(value: str, max_bytes: int) -> str:
    raw = value.encode("utf-8", "replace")
    return value if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", "ignore")


def choose_index(settings: Settings) -> str:
    wanted = (settings.milvus_index or ("FLAT" if settings.milvus_is_lite else "HNSW")).upper()
    if settings.milvus_is_lite:
        if wanted not in LITE_INDEXES:
            hint = " (GPU indexes need a GPU Milvus server)" if wanted in GPU_INDEXES else ""
            raise ConfigError(f"index type {wanted} cannot be built by Milvus Lite{hint}; "
                              f"use one of {sorted(LITE_INDEXES)} or point MILLRACE_MILVUS_URI at a server")
    elif wanted not in SERVER_INDEXES:
        raise ConfigError(f"unknown Milvus index type {wanted}; known: {sorted(SERVER_INDEXES)}")
    return wanted


_import_lock = threading.Lock()
_imported: list = []


def pymilvus():
    """Import pymilvus without letting it reconfigure logging.

    On import it calls logging.config.dictConfig, which shuts down every handler already installed: inside a
    Prefect flow that blocks ~5 s flushing the API log handler and leaves Prefect's handlers closed."""
    import logging.config

    # Under the lock: a second task thread must not pick up the half-initialised module from sys.modules.
    with _import_lock:
        if not _imported:
            real = logging.config.dictConfig
            logging.config.dictConfig = lambda config: None
            try:
                import pymilvus as module
            finally:
                logging.config.dictConfig = real
            # Every query_iterator on Lite warns that it uses a client-side timestamp, which is expected there.
            logging.getLogger("pymilvus").setLevel(logging.ERROR)
            _imported.append(module)
        return _imported[0]


def connect(settings: Settings):
    """A MilvusClient, retried with backoff; a dead server or a locked Lite file ends in a ConfigError."""
    MilvusClient = pymilvus().MilvusClient
    from pymilvus.exceptions import MilvusException

    uri = settings.resolved_milvus_uri
    if settings.milvus_is_lite:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            return MilvusClient(uri=uri)
        except MilvusException as exc:
            raise ConfigError(
                f"cannot open Milvus Lite data {uri}: {exc.message}. Milvus Lite lets one process open its data; "
                "if another millrace process (a running ingest, a search) has it open, wait for it, or run a "
                "Milvus server (`make server`) and set MILLRACE_MILVUS_URI=http://127.0.0.1:19530") from exc

    def attempt():
        return MilvusClient(uri=uri, token=settings.milvus_token.get_secret_value(),
                            db_name=settings.milvus_db, timeout=5)

    try:
        return with_retries(attempt, settings.retry_delays, what=f"connect to Milvus at {uri}")
    except Exception as exc:
        raise ConfigError(f"cannot reach Milvus at {uri} after {len(settings.retry_delays) + 1} tries ({exc}). "
                          "Check that the server is up (`make server` runs one locally) and MILLRACE_MILVUS_URI "
                          "/ MILLRACE_MILVUS_TOKEN are right") from exc


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

    def engine_has_bm25(self) -> bool:
        """BM25 Functions arrived in Milvus 2.5: milvus-lite 2.5 has them, the 2.3 standalone server does not."""
        if self.settings.milvus_is_lite:
            return True
        try:
            return _version(self.client.get_server_version()) >= (2, 5)
        except Exception:
            return False

    def has_full_text(self) -> bool:
        """Whether this collection was created with the BM25 field (collections from before it exist without)."""
        if self._full_text is None and self.exists():
            fields = self.client.describe_collection(self.collection)["fields"]
            self._full_text = any(f["name"] == SPARSE_FIELD for f in fields)
        return bool(self._full_text)

    def close(self) -> None:
        self.client.close()

    def exists(self) -> bool:
        return self.client.has_collection(self.collection)

    def ensure_collection(self, dim: int) -> None:
        DataType, MilvusClient = pymilvus().DataType, pymilvus().MilvusClient

        if self.exists():
            field = next(f for f in self.client.describe_collection(self.collection)["fields"] if f["name"] == "vector")
            have = int(field["params"]["dim"])
            if have != dim:
                raise ConfigError(f"collection {self.collection} holds {have}-d vectors but the model makes {dim}-d; "
                                  "use another --collection or drop this one")
            return
        full_text = self.settings.full_text == "on" or (self.settings.full_text == "auto" and self.engine_has_bm25())
        if self.settings.full_text == "on" and not self.engine_has_bm25():
            raise ConfigError("MILLRACE_FULL_TEXT=on needs Milvus >= 2.5 (BM25 functions); this server is older. "
                              "Use MILLRACE_FULL_TEXT=auto to index without full-text search")
        Function, FunctionType = pymilvus().Function, pymilvus().FunctionType
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
        schema.add_field("chunk_index", DataType.INT64)
        text_opts = {"enable_analyzer": True, "analyzer_params": ANALYZER} if full_text else {}
        schema.add_field("text", DataType.VARCHAR, max_length=_LIMITS["text"], **text_opts)
        schema.add_field("source_uri", DataType.VARCHAR, max_length=_LIMITS["source_uri"])
        schema.add_field("title", DataType.VARCHAR, max_length=_LIMITS["title"])
        schema.add_field("page", DataType.INT64)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("ingested_at", DataType.INT64)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type=self.index_type, metric_type=self.settings.milvus_metric,
                        params=_BUILD.get(self.index_type, {}))
        if full_text:
            schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25,
                                         input_field_names=["text"], output_field_names=[SPARSE_FIELD]))
            index.add_index(SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        # Strong consistency: counts and reads right after a write must see it (reconciliation relies on it).
        self.client.create_collection(self.collection, schema=schema, index_params=index, consistency_level="Strong")
        self._full_text = full_text

    def upsert(self, chunks: Iterable[Chunk], batch: int = 500, stored: set[str] | None = None) -> int:
        """Write chunks by primary key. With `stored` (the ids the collection holds for these documents, read just
        before) ids outside it are plainly inserted, which skips upsert's delete step (~30% of a Lite write)."""
        now = int(time.time())
        rows = [{"chunk_id": c.chunk_id, "doc_id": c.doc_id, "chunk_index": c.chunk_index,
                 "text": _clip(c.text, _LIMITS["text"]), "source_uri": _clip(c.source_uri, _LIMITS["source_uri"]),
                 "title": _clip(c.title, _LIMITS["title"]), "page": c.page, "content_hash": c.content_hash,
                 "ingested_at": now, "metadata": c.metadata, "vector": c.vector} for c in chunks]
        groups = [("upsert", rows)] if stored is None else [
            ("insert", [r for r in rows if r["chunk_id"] not in stored]),
            ("upsert", [r for r in rows if r["chunk_id"] in stored])]
        for op, group in groups:
            for i in range(0, len(group), batch):
                part = group[i:i + batch]
                with_retries(lambda: getattr(self.client, op)(self.collection, part), self.settings.retry_delays,
                             what=f"{op} into {self.collection}")
        return len(rows)

    def rows(self, doc_ids: Iterable[str] | None, fields: list[str]) -> Iterable[dict]:
        """Rows of the given documents (or all), paged: one query, not one per document."""
        doc_ids = sorted(set(doc_ids)) if doc_ids is not None else None
        if (doc_ids is not None and not doc_ids) or not self.exists():
            return
        expr = f"doc_id in {json.dumps(doc_ids)}" if doc_ids is not None else 'chunk_id != ""'
        it = self.client.query_iterator(self.collection, filter=expr, output_fields=fields, batch_size=2000)
        try:
            while page := it.next():
                yield from page
        finally:
            it.close()

    def chunk_ids(self, doc_ids: Iterable[str] | None = None) -> dict[str, set[str]]:
        """Chunk ids per document, for the given documents or all."""
        found: dict[str, set[str]] = {}
        for row in self.rows(doc_ids, ["chunk_id", "doc_id"]):
            found.setdefault(row["doc_id"], set()).add(row["chunk_id"])
        return found

    def vectors_by_hash(self, doc_ids: Iterable[str]) -> dict[str, list[float]]:
        """Stored vectors of these documents keyed by chunk content hash, for embedding reuse."""
        return {row["content_hash"]: [float(v) for v in row["vector"]]
                for row in self.rows(doc_ids, ["content_hash", "vector"])}

    def delete_ids(self, ids: Iterable[str], batch: int = 1000) -> int:
        ids = sorted(ids)
        for i in range(0, len(ids), batch):
            part = ids[i:i + batch]
            with_retries(lambda: self.client.delete(self.collection, ids=part), self.settings.retry_delays,
                         what=f"delete from {self.collection}")
        return len(ids)

    def delete_docs(self, keep: dict[str, set[str]]) -> int:
        """Remove every chunk of the given documents except their `keep` ids (the new version's)."""
        existing = self.chunk_ids(keep.keys())
        stale = set().union(*(ids - keep[doc] for doc, ids in existing.items())) if existing else set()
        return self.delete_ids(stale) if stale else 0

    def count(self, doc_id: str | None = None) -> int:
        if not self.exists():
            return 0
        expr = f'doc_id == "{doc_id}"' if doc_id else ""
        res = self.client.query(self.collection, filter=expr, output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def search(self, vector: list[float], k: int = 10, expr: str = "", text: str | None = None,
               mode: str = "dense") -> list[Hit]:
        return self.search_many([vector], [text or ""], k, expr, mode)[0]

    def search_many(self, vectors: list[list[float]], texts: list[str], k: int = 10, expr: str = "",
                    mode: str = "dense", group_by_doc: bool = False, consistency: str | None = None
                    ) -> list[list[Hit]]:
        """Top-k chunks per query: `dense` (vectors), `bm25` (texts) or `hybrid` (both, fused by RRF).

        `group_by_doc` returns at most one chunk (the best) per document, for document-level ranking."""
        if not self.exists():
            raise ConfigError(f"collection {self.collection} does not exist: run `millrace ingest` first")
        if mode not in ("dense", "bm25", "hybrid"):
            raise ConfigError(f"unknown search mode {mode!r}: use dense, bm25 or hybrid")
        if mode != "dense" and not self.has_full_text():
            raise ConfigError(f"collection {self.collection} has no BM25 field, so {mode} search is impossible: it "
                              "was created before full-text indexing or on a Milvus < 2.5. Re-create it (ingest into a "
                              "new --collection) on Milvus Lite or Milvus >= 2.5")
        mp = pymilvus()
        group = {"group_by_field": "doc_id"} if group_by_doc else {}
        dense = {"metric_type": self.settings.milvus_metric, "params": _SEARCH.get(self.index_type, {})}
        # Searches need not wait for Strong consistency (counts and reconciliation do): on a server, Strong makes
        # every search wait for the next time tick, ~200 ms (bench/query.py measured 200 ms p50 at 10k rows).
        level = {"consistency_level": consistency or self.settings.search_consistency}
        if mode == "dense":
            res = self.client.search(self.collection, data=vectors, anns_field="vector", limit=k, filter=expr,
                                     output_fields=OUTPUT_FIELDS, search_params=dense, **group, **level)
        elif mode == "bm25":
            res = self.client.search(self.collection, data=texts, anns_field=SPARSE_FIELD, limit=k, filter=expr,
                                     output_fields=OUTPUT_FIELDS, search_params={"metric_type": "BM25"}, **group,
                                     **level)
        else:
            # Fuse chunk rankings and group afterwards. Milvus' group_by in hybrid_search groups each sub-search
            # before fusion: on SciFact that scored nDCG@10 0.530 against 0.709 for fusing chunks then grouping.
            fetch = min(3 * k, 16384) if group_by_doc else k
            reqs = [mp.AnnSearchRequest(data=vectors, anns_field="vector", param=dense, limit=fetch, expr=expr or None),
                    mp.AnnSearchRequest(data=texts, anns_field=SPARSE_FIELD, param={"metric_type": "BM25"},
                                        limit=fetch, expr=expr or None)]
            res = self.client.hybrid_search(self.collection, reqs=reqs, ranker=mp.RRFRanker(RRF_K), limit=fetch,
                                            output_fields=OUTPUT_FIELDS, **level)
        out = []
        for hits in res:
            found = [Hit(score=float(r["distance"]), chunk_id=str(r["id"]), **{f: r["entity"][f] for f in OUTPUT_FIELDS})
                     for r in hits]
            if group_by_doc:
                seen: set[str] = set()
                found = [h for h in found if h.doc_id not in seen and not seen.add(h.doc_id)]
            out.append(found[:k])
        return out
