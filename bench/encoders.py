"""Encoder backends side by side: encode-only throughput on SciFact chunk texts, agreement with torch fp32, and the
quality gate (SciFact test nDCG@10, dense and hybrid, by `millrace eval beir` with each backend).

    python bench/encoders.py --corpus ../shared/data/scifact --texts 2000 --eval

1. Chunks: the corpus' records chunked by the product's chunker (millrace.documents.chunk), an even sample of --texts of them.
2. Per backend, in one process, one after the other, torch first: the first use (export, cached under a fresh
   MILLRACE_HOME, and load), a batch-size sweep, then all the sample at the best batch size: texts/s, and the cosine
   of each vector with torch's (mean, min). Ratios are to torch fp32 in the same run.
3. --eval: `millrace eval beir <corpus> --embed-backend B` per backend, each into its own collection under a fresh
   MILLRACE_HOME; a backend passes the gate when dense and hybrid nDCG@10 are within 0.005 of torch's."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from _util import ROOT, table, write

GATE = 0.005


def chunk_texts(corpus: str, limit: int) -> list[str]:
    from millrace.benchmark import corpus_source
    from millrace.documents.chunk import Chunker
    from millrace.config import Settings
    from millrace.sources.jsonl import JsonlSource, record_document

    source = JsonlSource(corpus_source(corpus))
    chunker, texts = Chunker(Settings()), []
    for obj in source.list():
        texts.extend(c.text for c in chunker.split(record_document(obj, source.read(obj))))
    step = max(1, len(texts) // limit)
    return texts[::step][:limit]


def measure(backend: str, texts: list[str], reference: np.ndarray | None) -> tuple[dict, np.ndarray]:
    from millrace.benchmark import encode_sweep
    from millrace.config import Settings
    from millrace.documents.embed import Embedder

    home = Path(tempfile.mkdtemp(prefix=f"millrace-bench-{backend}-"))
    t = time.perf_counter()
    embedder = Embedder(Settings(home=home, embed_backend=backend))
    first_use = time.perf_counter() - t
    sweep = encode_sweep(embedder, texts, sizes=(8, 16, 32, 64), sample=min(512, len(texts)))
    best = max(sweep, key=sweep.get)
    t = time.perf_counter()
    vectors = embedder.encode(texts, batch_size=best)
    seconds = time.perf_counter() - t
    row = {"backend": backend, "first_use_s": round(first_use, 1), "best_batch": best,
           "texts_per_s": round(len(texts) / seconds, 1), "sweep": sweep}
    if reference is not None:
        cos = (vectors * reference).sum(axis=1)
        row |= {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5)}
    return row, vectors


def evaluate(corpus: str, backend: str) -> dict:
    home = tempfile.mkdtemp(prefix=f"millrace-eval-{backend}-")
    out = Path(home) / "eval.json"
    env = {**os.environ, "MILLRACE_HOME": home, "PREFECT_HOME": tempfile.mkdtemp(prefix="prefect-")}
    t = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "millrace"), "eval", "beir", corpus, "--embed-backend", backend,
                    "--json", "--out", str(out)], env=env, check=True, capture_output=True, text=True, timeout=7200)
    result = json.loads(out.read_text())
    return {"eval_seconds": round(time.perf_counter() - t, 1),
            **{f"ndcg10_{mode}": round(scores["ndcg@10"], 5) for mode, scores in result["by_mode"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--texts", type=int, default=2000, help="chunk texts encoded per backend")
    ap.add_argument("--backends", default="torch,onnx,onnx-int8,openvino")
    ap.add_argument("--eval", action="store_true", help="also run the SciFact quality gate per backend")
    args = ap.parse_args()
    texts = chunk_texts(args.corpus, args.texts)
    rows, reference = [], None
    for backend in args.backends.split(","):
        row, vectors = measure(backend, texts, reference)
        if backend == "torch":
            reference = vectors
        rows.append(row)
        print(table([row], ["backend", "first_use_s", "best_batch", "texts_per_s", "cosine_mean", "cosine_min"]),
              flush=True)
    torch_rate = next(r["texts_per_s"] for r in rows if r["backend"] == "torch")
    for row in rows:
        row["vs_torch"] = round(row["texts_per_s"] / torch_rate, 3)
    if args.eval:
        for row in rows:
            row.update(evaluate(args.corpus, row["backend"]))
            print(row, flush=True)
        base = next(r for r in rows if r["backend"] == "torch")
        for row in rows:
            row["passes_gate"] = all(abs(row[k] - base[k]) <= GATE for k in base if k.startswith("ndcg10_"))
    columns = ["backend", "texts_per_s", "vs_torch", "best_batch", "first_use_s", "cosine_mean", "cosine_min",
               *(["ndcg10_dense", "ndcg10_hybrid", "passes_gate"] if args.eval else [])]
    print(table(rows, columns))
    write("encoders", {"texts": len(texts), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
