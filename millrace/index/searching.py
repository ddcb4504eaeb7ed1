"""Searches of one collection: dense (vectors), BM25 (texts) or hybrid (both, fused by reciprocal rank), and the hits
they answer, optionally one per document."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from millrace.config import ConfigError
from millrace.documents.records import Hit
from millrace.index.connect import pymilvus
from millrace.index.schema import OUTPUT_FIELDS, SPARSE_FIELD

HYBRID_CANDIDATES = 20  # per side of a hybrid search, at least (see search_collection)
RRF_K = 60  # the usual reciprocal-rank-fusion constant (Cormack et al. 2009)


def as_vector(vector) -> np.ndarray:
    """A 1-D float32 array (pymilvus 3.0.2 inserts and searches numpy arrays as they are, on Lite and the server)."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"a vector must be 1-D, got shape {arr.shape}")
    return arr


def search_collection(store, vectors: Sequence[Sequence[float]] | np.ndarray, texts: list[str], k: int,
                      expr: str, mode: str, group_by_doc: bool, consistency: str | None) -> list[list[Hit]]:
    """MilvusStore.search_many for `store` (a MilvusStore; not imported here, which imports this): top-k chunks per
    query, each call through the store's retry layer."""
    if mode not in ("dense", "bm25", "hybrid"):
        raise ConfigError(f"unknown search mode {mode!r}: use dense, bm25 or hybrid")
    if mode != "dense" and not store.has_full_text():
        if not store.exists():
            raise store.missing()
        raise ConfigError(f"collection {store.collection} has no BM25 field, so {mode} search is impossible: it "
                          "was created before full-text indexing or on a Milvus < 2.5. Re-create it (ingest into a "
                          "new --collection) on Milvus Lite or Milvus >= 2.5")
    mp = pymilvus()
    vectors = [as_vector(v) for v in vectors]  # lists, numpy rows or a 2-D array: all float32 rows
    group = {"group_by_field": "doc_id"} if group_by_doc else {}
    dense = {"metric_type": store.settings.milvus_metric, "params": store.dense_params()}
    # Searches need not wait for Strong consistency (counts and reconciliation do): on a server, Strong makes
    # every search wait for the next time tick, ~200 ms (bench/query.py measured 200 ms p50 at 10k rows).
    level = {"consistency_level": consistency or store.settings.search_consistency}
    # Whether the collection exists is asked only when a search fails: one round trip less on every search.
    try:
        if mode == "dense":
            res = store.call("search", store.collection, data=vectors, anns_field="vector", limit=k, filter=expr,
                             output_fields=OUTPUT_FIELDS, search_params=dense, **group, **level)
        elif mode == "bm25":
            res = store.call("search", store.collection, data=texts, anns_field=SPARSE_FIELD, limit=k,
                             filter=expr, output_fields=OUTPUT_FIELDS, search_params={"metric_type": "BM25"},
                             **group, **level)
        else:
            # Fuse chunk rankings and group afterwards. Milvus' group_by in hybrid_search groups each sub-search
            # before fusion: on SciFact that scored nDCG@10 0.530 against 0.709 for fusing chunks then grouping.
            # Each side contributes candidates beyond k: with k candidates a side, a chunk ranked 1st by BM25 and
            # absent from the dense list ties with the dense 1st absent from BM25's, and k=1 is a coin toss.
            fetch = min(3 * k, 16384) if group_by_doc else min(max(2 * k, HYBRID_CANDIDATES), 16384)
            reqs = [mp.AnnSearchRequest(data=vectors, anns_field="vector", param=dense, limit=fetch,
                                        expr=expr or None),
                    mp.AnnSearchRequest(data=texts, anns_field=SPARSE_FIELD, param={"metric_type": "BM25"},
                                        limit=fetch, expr=expr or None)]
            res = store.call("hybrid_search", store.collection, reqs=reqs, ranker=mp.RRFRanker(RRF_K),
                             limit=fetch, output_fields=OUTPUT_FIELDS, **level)
    except Exception:
        if not store.exists():
            raise store.missing() from None
        raise
    out = []
    for hits in res:
        found = [Hit(score=float(r["distance"]), chunk_id=str(r["id"]), collection=store.collection,
                     **{f: r["entity"][f] for f in OUTPUT_FIELDS}) for r in hits]
        if group_by_doc:
            seen: set[str] = set()
            found = [h for h in found if h.doc_id not in seen and not seen.add(h.doc_id)]
        out.append(found[:k])
    return out
