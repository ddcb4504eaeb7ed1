"""Milvus Lite by size: FLAT against the IVF_FLAT collection millrace.index.lite_index moves it to, at 10k / 100k / 1M
vectors. Per size: search p50/p99 (raw `MilvusStore.search_many`, dense, top 10, the parameters the store reads from
the index), recall@10 of each against the exact top 10 (numpy), the copy + IVF build time, and the Lite server's
memory.

The vectors: 384-d points around real embeddings (SciFact passages, the packaged model), each at cosine ~0.8 from
its passage, so that neighbourhoods have the structure of a text collection; the queries are SciFact's queries,
embedded. Uniform random vectors would have none, and no IVF index helps there.

    python bench/lite_index.py --scifact ../shared/data/scifact --sizes 10000,100000   # ~10 min on 2 cores"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from _util import table, write

NOISE_COS = 0.8  # cosine of a synthetic vector to its passage
SWEEP = (64, 32, 16, 8, 4)  # shares of the IVF lists searched, besides the store's own choice


def embed_scifact(folder: Path, passages: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    from millrace import clients
    from millrace.config import load_settings

    with gzip.open(folder / "corpus.jsonl.gz", "rt") as f:
        texts = [(d.get("title", "") + " " + d["text"]).strip() for d in map(json.loads, f)][:passages]
    with open(folder / "queries.jsonl") as f:
        asked = [q["text"] for q in map(json.loads, f)][:queries]
    embedder = clients.embedder(load_settings(embed_backend="torch"))
    return (np.asarray(embedder.encode(texts), dtype=np.float32), np.asarray(embedder.encode(asked), dtype=np.float32))


def vectors(anchors: np.ndarray, start: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(start)
    base = anchors[rng.integers(0, len(anchors), n)]
    noise = rng.standard_normal(base.shape, dtype=np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base  # orthogonal to the passage
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    out = NOISE_COS * base + np.sqrt(1 - NOISE_COS ** 2) * noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def rows(vecs: np.ndarray, start: int) -> list[dict]:
    return [{"chunk_id": f"syn-{i:08d}", "doc_id": f"doc-{i // 8:07d}", "chunk_index": i % 8, "text": f"chunk {i}",
             "source_uri": f"file:///synthetic/{i // 8}.txt", "title": "", "page": 0, "content_hash": f"{i:064x}",
             "ingested_at": 0, "metadata": {}, "vector": v.tolist()} for i, v in enumerate(vecs, start=start)]


def lite_rss_mb() -> float:
    kids = psutil.Process().children(recursive=True)
    return round(sum(p.memory_info().rss for p in kids if "milvus" in p.name().lower()) / 2**20, 1)


def measure(store, queries: np.ndarray, truth: np.ndarray) -> dict:
    for q in queries[:10]:  # first searches load segments
        store.search_many([q], [""], 10)
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        hits = store.search_many([q], [""], 10)[0]
        lat.append((time.perf_counter() - t) * 1000)
        found.append({int(h.chunk_id[4:]) for h in hits})
    q = statistics.quantiles(lat, n=100, method="inclusive")
    recall = statistics.fmean(len(f & set(t)) / 10 for f, t in zip(found, truth))
    return {"p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2), "recall@10": round(recall, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scifact", type=Path, required=True)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--passages", type=int, default=5183)
    args = ap.parse_args()
    from millrace import clients
    from millrace.index import lite_index
    from millrace.config import load_settings
    from millrace.index.connect import nlist_for, nprobe_for

    anchors, queries = embed_scifact(args.scifact, args.passages, args.queries)
    results, data = [], np.zeros((0, 384), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="millrace-lite-index-") as tmp:
        base = load_settings(home=tmp, lite_ivf_rows=0)
        for size in sorted(int(s) for s in args.sizes.split(",")):
            flat = clients.milvus_store(base.model_copy(update={"milvus_index": "FLAT"}), f"flat_{size}")
            flat.ensure_collection(384)
            grown = np.empty((size, 384), dtype=np.float32)  # sizes are cumulative: the rows so far, then more
            grown[:len(data)] = data
            for start in tqdm(range(len(data), size, 10000), desc=f"grow to {size:,}", unit="10k rows"):
                grown[start:start + 10000] = vectors(anchors, start, min(10000, size - start))
            data = grown
            for start in tqdm(range(0, size, 1000), desc=f"insert {size:,} (FLAT)", unit="k rows"):
                flat._write("insert", rows(data[start:start + 1000], start))
            flat.load()
            truth = np.argsort(-(queries @ data.T), axis=1)[:, :10]
            r_flat = measure(flat, queries, truth)
            mem_flat = lite_rss_mb()
            nlist = nlist_for(size)
            ivf = clients.milvus_store(base.model_copy(update={"milvus_index": "IVF_FLAT", "milvus_nlist": nlist}),
                                       f"ivf_{size}")
            t = time.perf_counter()
            ivf.ensure_collection(384)
            copied = lite_index.copy_rows(flat, ivf)  # the copy the switch makes
            ivf.load()
            ivf.search_many([queries[0]], [""], 10)  # the index is built by the time a search answers
            build_s = round(time.perf_counter() - t, 1)
            r_ivf = measure(ivf, queries, truth)  # nprobe as the store reads it from the index (nprobe_for)
            sweep = {}
            for share in SWEEP:  # other shares of the lists: does nprobe move recall at all?
                ivf._dense = {"nprobe": min(nlist, max(16, -(-nlist // share)))}
                sweep[f"1/{share}"] = {"nprobe": ivf._dense["nprobe"], **measure(ivf, queries, truth)}
            ivf._dense = None
            flat.drop()  # memory of the IVF collection alone
            time.sleep(2)
            mem_ivf = lite_rss_mb()
            ivf.drop()
            results.append({"vectors": size, "flat": r_flat, "ivf": r_ivf, "nlist": nlist, "nprobe": nprobe_for(nlist),
                            "copied": copied, "copy_and_build_s": build_s, "nprobe_sweep": sweep,
                            "lite_rss_mb_flat": mem_flat, "lite_rss_mb_ivf": mem_ivf})
            print(results[-1], flush=True)
    print(table([{"vectors": f"{r['vectors']:,}", "FLAT p50": r["flat"]["p50_ms"], "FLAT p99": r["flat"]["p99_ms"],
                  "IVF p50": r["ivf"]["p50_ms"], "IVF p99": r["ivf"]["p99_ms"], "IVF recall@10": r["ivf"]["recall@10"],
                  "nlist/nprobe": f"{r['nlist']}/{r['nprobe']}", "copy+build s": r["copy_and_build_s"],
                  "Lite MB FLAT/IVF": f"{r['lite_rss_mb_flat']}/{r['lite_rss_mb_ivf']}"} for r in results],
                ["vectors", "FLAT p50", "FLAT p99", "IVF p50", "IVF p99", "IVF recall@10", "nlist/nprobe",
                 "copy+build s", "Lite MB FLAT/IVF"]) + "\n(milliseconds; recall@10 against the exact top 10)")
    write("lite_index", {"queries": len(queries), "noise_cos": NOISE_COS, "results": results})


if __name__ == "__main__":
    main()
