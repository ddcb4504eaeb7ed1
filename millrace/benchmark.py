"""Ingestion efficiency: end-to-end ingest throughput against the encode-only limit, i.e. the same model encoding
the same chunk texts at its best batch size, in the same process, measured in the same run.

The Prefect-free parts (corpus selection, encode-only timing, the report); the run itself, which calls the ingest
flow, is flows.bench.bench_ingest."""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path
from typing import Any

from millrace.config import ConfigError

SWEEP = (4, 8, 16, 32, 64, 128)


def corpus_source(corpus: str | Path) -> Path:
    """A BEIR folder means its corpus file; anything else (a folder of documents, a .jsonl file) is itself."""
    path = Path(corpus).expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"corpus {path} does not exist")
    for name in ("corpus.jsonl.gz", "corpus.jsonl"):
        if path.is_dir() and (path / name).is_file():
            return path / name
    return path


def take(corpus: str | Path, limit: int | None, workdir: Path) -> Path:
    """The corpus, or a copy of its first `limit` documents (records or files, in sorted order)."""
    source = corpus_source(corpus)
    if not limit:
        return source
    if source.is_file() and source.name.endswith((".jsonl", ".jsonl.gz")):
        out = workdir / "corpus.jsonl"
        with (gzip.open if source.name.endswith(".gz") else open)(source, "rt", encoding="utf-8") as src, \
                open(out, "w", encoding="utf-8") as dst:
            lines = (line for line in src if line.strip())
            for _, line in zip(range(limit), lines):
                dst.write(line)
        return out
    out = workdir / "docs"
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(source).parts)][:limit]
    for p in files:
        dest = out / p.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
    return out


def encode_sweep(embedder, texts: list[str], sizes=SWEEP, sample: int = 512, progress: bool = False
                 ) -> dict[int, float]:
    """Texts per second at each batch size, on an evenly spread sample of the texts."""
    from tqdm.auto import tqdm

    step = max(1, len(texts) // sample)
    probe = texts[::step][:sample]
    embedder.encode(probe[:32], batch_size=16)  # warm-up: first calls allocate and tune kernels
    rates: dict[int, float] = {}
    for size in tqdm(sizes, desc="batch-size sweep", disable=not progress):
        t = time.perf_counter()
        embedder.encode(probe, batch_size=size)
        rates[size] = round(len(probe) / (time.perf_counter() - t), 2)
    return rates


def encode_all(embedder, texts: list[str], batch_size: int, progress: bool = False) -> float:
    """Seconds to encode every text once at `batch_size`, sorted by length as the model does in one call."""
    from tqdm.auto import tqdm

    ordered = sorted(texts, key=len)
    step = 1024
    started = time.perf_counter()
    with tqdm(total=len(ordered), desc="encode-only", unit="chunk", disable=not progress) as bar:
        for i in range(0, len(ordered), step):
            embedder.encode(ordered[i:i + step], batch_size=batch_size)
            bar.update(len(ordered[i:i + step]))
    return time.perf_counter() - started


def format_ingest(r: dict[str, Any]) -> str:
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in r["phase_seconds"].items())
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stage_seconds"].items())
    sweep = ", ".join(f"{k}: {v:.1f}/s" for k, v in r["batch_sweep"].items())
    return "\n".join([
        f"corpus      {r['corpus']}" + (f" (first {r['limit']})" if r["limit"] else ""),
        f"device      {r['device']}, {r['torch_threads']} torch threads, {r['cpus']} CPUs",
        f"end to end  {r['chunks']} chunks, {r['documents']} docs in {r['e2e_seconds']:.1f}s = "
        f"{r['e2e_chunks_per_s']:.1f} chunks/s, {r['e2e_docs_per_s']:.1f} docs/s",
        f"encode-only {r['encode_only_chunks_per_s']:.1f} chunks/s at batch size {r['best_batch_size']} ({sweep})",
        f"efficiency  {r['efficiency']:.3f} of the encode-only limit",
        f"wall phases {phases}",
        f"task stages {stages} (summed over worker threads)",
    ])
