"""`millrace bench ingest` and bench/ingest.py: the real ingest flow on a corpus, then encode-only on its chunk texts
(the Prefect-free helpers are in millrace.benchmark)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from flows.options import flow_options
from millrace import clients
from millrace.benchmark import SWEEP, corpus_source, encode_all, encode_sweep, take
from millrace.config import Settings
from millrace.documents.embed import export_cache


def bench_ingest(corpus: str | Path, settings: Settings, limit: int | None = None, progress: bool = True,
                 sizes=SWEEP) -> dict[str, Any]:
    """Ingest the corpus into a fresh, throw-away home with the real flow, then encode its chunk texts directly; the
    model's export is cached where the user's runs find it, as on any machine after its first run."""
    import torch

    from flows.ingest import ingest

    with tempfile.TemporaryDirectory(prefix="millrace-bench-") as tmp:
        source = take(corpus, limit, Path(tmp))
        # The model's export cache stays the user's own (a throw-away home would export again inside every timed
        # run), and the export itself, a first use's (~7 s, once per machine), happens before the clock starts.
        run = settings.model_copy(update={"home": Path(tmp) / "home", "collection": "bench", "ledger_url": "",
                                          "milvus_uri": "", "model_cache": str(export_cache(settings))})
        options = flow_options(run)
        options["home"] = str(run.home)
        clients.embedder(run)
        if progress:
            print(f"ingesting {source} end to end ...", flush=True)
        started = time.perf_counter()
        summary = ingest(source=str(source), collection="bench", options=options)
        wall = time.perf_counter() - started
        try:
            texts = [row["text"] for row in clients.milvus_store(run).rows(None, ["text"])]
        finally:
            clients.forget(run)  # the Lite file goes with the temporary folder
        embedder = clients.embedder(run)
        rates = encode_sweep(embedder, texts, sizes, progress=progress)
        best = max(rates, key=rates.get)
        encode_s = encode_all(embedder, texts, best, progress=progress)
    chunks = summary["chunks_written"]
    e2e = chunks / wall if wall else 0.0
    limit_rate = len(texts) / encode_s if encode_s else 0.0
    return {
        "efficiency": round(e2e / limit_rate, 4) if limit_rate else 0.0,
        "e2e_chunks_per_s": round(e2e, 2), "e2e_docs_per_s": round(summary["indexed"] / wall, 2),
        "encode_only_chunks_per_s": round(limit_rate, 2), "chunks": chunks, "documents": summary["indexed"],
        "failed": summary["failed"] + summary["quarantined"], "device": embedder.device,
        "e2e_seconds": round(wall, 2), "encode_only_seconds": round(encode_s, 2), "best_batch_size": best,
        "batch_sweep": rates, "stage_seconds": summary["stage_seconds"], "phase_seconds": summary["phase_seconds"],
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "corpus": str(corpus_source(corpus)),
        "limit": limit,
    }
