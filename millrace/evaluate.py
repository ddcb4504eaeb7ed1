"""Retrieval evaluation on BEIR-layout data sets. The metrics come from ir-measures (pytrec_eval underneath, the
implementation BEIR and MTEB use); nothing here computes a metric by hand."""

from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from millrace.config import ConfigError

MODES = ("dense", "bm25", "hybrid")
DEPTH = 100  # documents retrieved per query: the deepest cut-off reported (Recall@100)


def measures() -> dict:
    from ir_measures import AP, RR, R, nDCG

    return {"ndcg@10": nDCG @ 10, "map@10": AP @ 10, "recall@100": R @ DEPTH, "mrr@10": RR @ 10}


@dataclass
class BeirSet:
    name: str
    corpus: Path
    queries: dict[str, str]  # only the queries that have judgements in the split, as BEIR evaluates
    qrels: dict[str, dict[str, int]]
    split: str


def _first(folder: Path, names: Iterable[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _jsonl(path: Path) -> Iterable[dict]:
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if len(row) < 3 or not row[2].strip().lstrip("-").isdigit():
                continue  # the header line, or a blank one
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def load_beir(data_dir: str | Path, split: str = "test") -> BeirSet:
    """corpus.jsonl[.gz], queries.jsonl[.gz] and qrels/<split>.tsv, as BEIR lays them out."""
    root = Path(data_dir).expanduser().resolve()
    corpus = _first(root, ["corpus.jsonl.gz", "corpus.jsonl"])
    queries_path = _first(root, ["queries.jsonl.gz", "queries.jsonl"])
    if corpus is None or queries_path is None:
        raise ConfigError(f"{root} is not a BEIR data set: it needs corpus.jsonl[.gz] and queries.jsonl[.gz]")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise ConfigError(f"no qrels for split {split!r} in {root / 'qrels'} (have: {', '.join(have) or 'none'})")
    qrels = load_qrels(qrels_path)
    queries = {str(q["_id"]): str(q["text"]) for q in _jsonl(queries_path) if str(q["_id"]) in qrels}
    missing = set(qrels) - set(queries)
    if missing:
        raise ConfigError(f"{len(missing)} judged queries are missing from {queries_path.name}, e.g. {sorted(missing)[:3]}")
    return BeirSet(name=root.name, corpus=corpus, queries=queries, qrels=qrels, split=split)


def default_collection(name: str, backend: str = "torch") -> str:
    """beir_<name>, and the encoder backend unless torch: each backend's vectors are scored in a collection of
    their own (a collection keeps the backend it was built with)."""
    suffix = "" if backend == "torch" else "_" + backend
    return "beir_" + (re.sub(r"[^0-9a-zA-Z_]", "_", name + suffix).lower() or "dataset")


def retrieve(store, embedder, queries: dict[str, str], modes: Iterable[str], depth: int = DEPTH,
             batch: int = 64) -> dict[str, dict[str, dict[str, float]]]:
    """Per mode, each query's top `depth` documents (a document scores as its best chunk) keyed by corpus id.

    The queries are embedded once and reused by every mode that needs vectors."""
    from millrace.sources.jsonl import record_id

    modes = list(modes)
    runs: dict[str, dict[str, dict[str, float]]] = {m: {} for m in modes}
    qids = list(queries)
    for i in range(0, len(qids), batch):
        ids = qids[i:i + batch]
        texts = [queries[q] for q in ids]
        vectors = embedder.encode_queries(texts) if modes != ["bm25"] else [[0.0]] * len(texts)
        for mode in modes:
            # Strong: scoring right after an ingest must see every chunk it wrote (server searches default to Bounded).
            found = store.search_many(vectors, texts, depth, mode=mode, group_by_doc=True, consistency="Strong")
            for qid, hits in zip(ids, found):
                docs: dict[str, float] = {}
                for h in hits:
                    docs.setdefault(record_id(h.source_uri) if "#" in h.source_uri else h.source_uri, h.score)
                runs[mode][qid] = docs
    return runs


def score(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over the judged queries; a query with no results counts as zero, as in BEIR."""
    import ir_measures

    wanted = measures()
    full_run = {q: run.get(q) or {"__none__": 0.0} for q in qrels}
    agg = ir_measures.calc_aggregate(list(wanted.values()), qrels, full_run)
    return {key: round(float(agg[m]), 5) for key, m in wanted.items()}
