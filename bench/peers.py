"""Same work, same model, same chunk budget, same Milvus Lite: Millrace's flow against a naive serial loop and
LlamaIndex's IngestionPipeline, run one after another in this process on the same documents.

    python bench/peers.py --corpus ../shared/data/scifact --limit 1000

LlamaIndex comes from the `bench` extra (pip install -e '.[bench]'); it is never a runtime dependency."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _util import table, write


def millrace_flow(source: Path, home: Path) -> dict:
    from flows.ingest import ingest

    t = time.perf_counter()
    s = ingest(source=str(source), collection="peers", options={"home": str(home)})
    return {"seconds": time.perf_counter() - t, "chunks": s["chunks_written"], "docs": s["indexed"]}


def naive_loop(source: Path, home: Path) -> dict:
    """Read, extract, split, embed and insert one document at a time; no batching across documents, no workers."""
    from millrace import clients
    from millrace.config import load_settings
    from millrace.pipeline import extract

    settings = load_settings(home=str(home), collection="peers")
    t = time.perf_counter()
    src = clients.source(str(source), settings)
    chunker, embedder = clients.chunker(settings), clients.embedder(settings)
    store = clients.milvus_store(settings)
    store.ensure_collection(embedder.dim)
    from tqdm import tqdm

    chunks = docs = 0
    for obj in tqdm(list(src.list()), desc="naive loop", unit="doc"):
        try:
            doc = extract(obj, src.read(obj), settings)
        except Exception:  # the loop has no failure handling beyond skipping
            continue
        parts = chunker.split(doc)
        for c, v in zip(parts, embedder.encode([c.text for c in parts])):
            c.vector = v
        store.upsert(parts)
        chunks, docs = chunks + len(parts), docs + 1
    seconds = time.perf_counter() - t
    clients.forget(settings)
    return {"seconds": seconds, "chunks": chunks, "docs": docs}


def llamaindex(source: Path, home: Path, workers: int | None) -> dict:
    """IngestionPipeline(SentenceSplitter + HuggingFaceEmbedding of the same local model), then the same insert."""
    from llama_index.core import Document
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from millrace import clients
    from millrace.documents.chunk import load_tokenizer
    from millrace.config import load_settings
    from millrace.documents.embed import resolve_model_path
    from millrace.sources.jsonl import JsonlSource, record_document
    from millrace.documents.records import Chunk, sha256_text

    settings = load_settings(home=str(home), collection="peers")
    t = time.perf_counter()
    src = JsonlSource(source)
    docs = []
    for obj in src.list():
        d = record_document(obj, src.read(obj))
        docs.append(Document(text=d.text, doc_id=d.doc_id, metadata={"source_uri": d.source_uri, "title": d.title}))
    tokenizer = load_tokenizer(settings)
    pipeline = IngestionPipeline(transformations=[
        SentenceSplitter(chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap,
                         tokenizer=lambda text: tokenizer.encode(text, add_special_tokens=False)),
        HuggingFaceEmbedding(model_name=resolve_model_path(settings), device="cpu",
                             embed_batch_size=settings.embed_batch_size or 8, normalize=True)])
    nodes = pipeline.run(documents=docs, num_workers=workers, show_progress=True)
    store = clients.milvus_store(settings)
    store.ensure_collection(len(nodes[0].embedding))
    rows = []
    for i, n in enumerate(nodes):
        h = sha256_text(n.text)
        rows.append(Chunk(chunk_id=f"{n.ref_doc_id}-{i:06d}", doc_id=n.ref_doc_id, chunk_index=i, text=n.text,
                          source_uri=n.metadata["source_uri"], title=n.metadata["title"], content_hash=h,
                          vector=n.embedding))
    store.upsert(rows)
    seconds = time.perf_counter() - t
    clients.forget(settings)
    return {"seconds": seconds, "chunks": len(nodes), "docs": len(docs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="a BEIR folder or .jsonl[.gz] of records")
    ap.add_argument("--limit", type=int, default=1000)
    args = ap.parse_args()
    from flows.api import ensure_prefect_api
    from millrace.benchmark import take

    ensure_prefect_api()
    rows = []
    with tempfile.TemporaryDirectory(prefix="millrace-peers-") as tmp:
        source = take(args.corpus, args.limit, Path(tmp))
        cores = os.cpu_count() or 1
        runs = [("millrace (Prefect + Dask)", lambda h: millrace_flow(source, h)),
                ("naive serial loop", lambda h: naive_loop(source, h)),
                ("LlamaIndex IngestionPipeline", lambda h: llamaindex(source, h, None)),
                (f"LlamaIndex IngestionPipeline num_workers={cores}", lambda h: llamaindex(source, h, cores))]
        for i, (name, fn) in enumerate(runs):
            print(f"running {name} ...", flush=True)
            r = fn(Path(tmp) / f"home{i}")
            rows.append({"system": name, "docs": r["docs"], "chunks": r["chunks"], "seconds": round(r["seconds"], 1),
                         "chunks_per_s": round(r["chunks"] / r["seconds"], 2)})
    base = rows[0]["chunks_per_s"]
    for r in rows:
        r["millrace_speedup"] = round(base / r["chunks_per_s"], 2)
    print(table(rows, ["system", "docs", "chunks", "seconds", "chunks_per_s", "millrace_speedup"]))
    write("peers", {"corpus": str(args.corpus), "limit": args.limit, "runs": rows})


if __name__ == "__main__":
    main()
