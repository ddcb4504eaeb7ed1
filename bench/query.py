"""Query latency at 10k / 100k / 1M synthetic 384-d vectors, per Milvus engine Millrace supports: Milvus Lite 2.5
(FLAT, in-process) and the Milvus 2.3 standalone server (HNSW, loopback). Two paths per size:
raw `MilvusClient.search` of a vector (top 10), and the `millrace search` path (embed the query text with the real
model, search, build cited hits) through millrace.search.Retriever, dense and (where the engine has BM25) hybrid.

    python bench/query.py                          # both engines, 10k,100k,1M
    python bench/query.py --engines lite --sizes 10000"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from _util import table, write

WORDS = ("turbine pressure valve leave policy invoice contract sensor alarm audit budget shipment warranty "
         "compliance latency cluster backup incident release vendor").split()


def rows(start: int, n: int, rng: np.random.Generator) -> list[dict]:
    vecs = rng.standard_normal((n, 384), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = []
    for i, v in enumerate(vecs, start=start):
        words = " ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 7, 11))
        out.append({"chunk_id": f"syn-{i:08d}", "doc_id": f"doc-{i // 8:07d}", "chunk_index": i % 8,
                    "text": f"synthetic chunk {i}: {words}", "source_uri": f"file:///synthetic/{i // 8}.txt",
                    "title": f"doc {i // 8}", "page": 0, "content_hash": f"{i:064x}", "ingested_at": 0,
                    "metadata": {}, "vector": v.tolist()})
    return out


def fill(store, target: int, rng, batch: int = 500) -> None:
    """Grow the collection to `target` rows (sizes are cumulative: 10k, then 90k more, ...)."""
    have = store.count()
    with tqdm(total=target, initial=have, desc=f"insert to {target:,}", unit="row") as bar:
        for start in range(have, target, batch):
            n = min(batch, target - start)
            store.client.insert(store.collection, rows(start, n, rng))
            bar.update(n)


def percentiles(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2), "mean_ms": round(statistics.fmean(ms), 2)}


def measure(store, retriever, n_queries: int, rng) -> dict:
    from millrace.index.connect import _SEARCH
    from millrace.index.schema import OUTPUT_FIELDS

    params = {"metric_type": store.settings.milvus_metric, "params": _SEARCH.get(store.index_type, {})}
    qs = rng.standard_normal((n_queries, 384), dtype=np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    texts = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} procedure {i}" for i in range(n_queries)]
    for q in qs[:10]:  # warm-up: first searches load segments and build caches
        store.client.search(store.collection, data=[q.tolist()], anns_field="vector", limit=10, search_params=params,
                            consistency_level=store.settings.search_consistency)
    raw = []
    for q in tqdm(qs, desc="raw search", unit="q", leave=False):
        t = time.perf_counter()
        store.client.search(store.collection, data=[q.tolist()], anns_field="vector", limit=10, output_fields=OUTPUT_FIELDS,
                            search_params=params, consistency_level=store.settings.search_consistency)
        raw.append(time.perf_counter() - t)
    out = {"raw": percentiles(raw), "raw_samples_ms": [round(x * 1000, 3) for x in raw]}
    for mode in ["dense", "hybrid"] if store.has_full_text() else ["dense"]:
        path = []
        for text in tqdm(texts, desc=f"millrace search ({mode})", unit="q", leave=False):
            t = time.perf_counter()
            retriever.search(text, 10, mode)
            path.append(time.perf_counter() - t)
        out[f"search_{mode}"] = percentiles(path)
        out[f"search_{mode}_samples_ms"] = [round(x * 1000, 3) for x in path]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_index(store, size: int, timeout: float) -> float:
    """Wait until the server's index covers every row (searches on unindexed segments are brute force);
    give up after `timeout` seconds and report the fraction indexed by then."""
    deadline = time.monotonic() + timeout
    done = 0
    with tqdm(total=size, desc=f"index build ({store.index_type})", unit="row") as bar:
        while True:
            info = store.client.describe_index(store.collection, "vector")
            done = int(info.get("indexed_rows", size) or 0)
            bar.update(max(0, min(done, size) - bar.n))
            if done >= size or time.monotonic() > deadline:
                return round(min(done, size) / size, 4)
            time.sleep(2)


def run_engine(engine: str, sizes: list[int], n_queries: int, tmp: Path, index_timeout: float = 600) -> list[dict]:
    from millrace import clients
    from millrace.config import load_settings
    from millrace.search import Retriever

    server = None
    if engine == "server":
        from milvus import default_server as server

        server.set_base_dir(str(tmp / "milvus-server"))
        server.listen_port = free_port()
        server.start()
        settings = load_settings(home=str(tmp / "home-server"), milvus_uri=f"http://127.0.0.1:{server.listen_port}",
                                 collection="latency")
    else:
        settings = load_settings(home=str(tmp / "home-lite"), collection="latency")
    try:
        store = clients.milvus_store(settings)
        store.ensure_collection(384)
        retriever = Retriever(settings, store)
        rng = np.random.default_rng(7)
        out = []
        for size in sizes:
            fill(store, size, rng)
            indexed = 1.0
            if engine == "server":
                store.client.flush(store.collection)
                indexed = wait_for_index(store, size, index_timeout)
                store.client.load_collection(store.collection)
            r = measure(store, retriever, n_queries, rng)
            out.append({"engine": engine, "index": store.index_type, "vectors": size, "indexed_fraction": indexed, **r})
            print(f"{engine} {size:,}: raw p50 {r['raw']['p50_ms']} ms p99 {r['raw']['p99_ms']} ms; "
                  f"search (dense) p50 {r['search_dense']['p50_ms']} ms p99 {r['search_dense']['p99_ms']} ms",
                  flush=True)
        clients.forget(settings)
        return out
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="lite,server")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--index-timeout", type=float, default=600, help="seconds to wait for a server index build")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = []
    with tempfile.TemporaryDirectory(prefix="millrace-query-") as tmp:
        for engine in args.engines.split(","):
            results += run_engine(engine, sizes, args.queries, Path(tmp), args.index_timeout)
    na = {"p50_ms": "-", "p99_ms": "-"}
    print(table([{"engine": r["engine"], "index": r["index"], "vectors": f"{r['vectors']:,}",
                  "indexed": r["indexed_fraction"],
                  "raw p50": r["raw"]["p50_ms"], "raw p99": r["raw"]["p99_ms"],
                  "dense p50": r["search_dense"]["p50_ms"], "dense p99": r["search_dense"]["p99_ms"],
                  "hybrid p50": r.get("search_hybrid", na)["p50_ms"], "hybrid p99": r.get("search_hybrid", na)["p99_ms"]}
                 for r in results],
                ["engine", "index", "vectors", "indexed", "raw p50", "raw p99", "dense p50", "dense p99", "hybrid p50",
                 "hybrid p99"]) + "\n(milliseconds; dense/hybrid = the `millrace search` path: embed + search + hits)")
    write("query", {"queries_per_config": args.queries, "results": results})


if __name__ == "__main__":
    main()
