"""The `evaluate` flow: ingest a BEIR data set through the normal ingest flow, run its queries, score them."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from blocks import load_settings
from flows.ingest import ingest
from millrace import clients, evaluate as ev
from millrace.config import Settings
from millrace.documents.embed import resolve_backend
from millrace.index import versions


class EvaluationGateError(RuntimeError):
    """The index scores below the bar the caller set: do not promote it."""


@task(name="score-queries", task_run_name="score {dataset}", cache_policy=NO_CACHE)
def score_queries(dataset: str, queries: dict[str, str], qrels: dict[str, dict[str, int]], modes: list[str],
                  settings: Settings) -> dict[str, dict[str, float]]:
    """Run every judged query in each mode and compute nDCG@10, MAP@10, Recall@100 and MRR@10."""
    runs = ev.retrieve(clients.milvus_store(settings), clients.embedder(settings), queries, modes)
    return {mode: ev.score(qrels, run) for mode, run in runs.items()}


@flow(name="evaluate", flow_run_name="evaluate {data_dir} ({mode})")
def evaluate(
    data_dir: str = Field(..., description="A BEIR data set folder (corpus.jsonl, queries.jsonl, qrels/)"),
    collection: str | None = Field(None, description="The collection to index it into; default from its name"),
    mode: str = Field("dense", description="Retrieval mode the gate scores: dense, bm25 or hybrid"),
    split: str = Field("test", description="The qrels split to score"),
    options: dict[str, Any] | None = Field(None, description="Setting overrides, as for the ingest flow"),
    min_ndcg: float | None = Field(None, description="Fail the run when nDCG@10 is below this bar"),
) -> dict[str, Any]:
    """Index a BEIR data set with the ingest flow and score retrieval on its judged queries."""
    if mode not in ev.MODES:
        raise ValueError(f"mode must be one of {ev.MODES}")
    ds = ev.load_beir(data_dir, split)
    settings = load_settings(**(options or {}))
    settings = settings.model_copy(update={"collection": collection or ev.default_collection(
        ds.name, resolve_backend(settings))})
    summary = ingest(source=str(ds.corpus), collection=settings.collection, options=options)
    logical = settings.collection
    # Queries are embedded as the collection's vectors were: with the model and backend it was built with.
    settings = versions.physical_settings(settings, versions.active_physical(settings))
    modes = [m for m in ev.MODES if m == "dense" or clients.milvus_store(settings).has_full_text()]
    by_mode = score_queries(ds.name, ds.queries, ds.qrels, modes, settings)
    result = {**by_mode[mode], "queries": len(ds.queries), "mode": mode, "split": split, "dataset": ds.name,
              "collection": logical, "documents": summary["seen"], "chunks": summary["collection_count"],
              "by_mode": by_mode}
    create_markdown_artifact(key=f"evaluation-{_key(ds.name)}", markdown=_report(result),
                             description=f"retrieval quality on {ds.name} ({split})")
    if min_ndcg is not None and result["ndcg@10"] < min_ndcg:
        raise EvaluationGateError(f"nDCG@10 {result['ndcg@10']:.4f} on {ds.name} is below the required {min_ndcg}")
    return result


def _report(result: dict[str, Any]) -> str:
    keys = ["ndcg@10", "map@10", "recall@100", "mrr@10"]
    lines = [f"# Retrieval on {result['dataset']} ({result['split']}, {result['queries']} queries)", "",
             f"{result['documents']} documents, {result['chunks']} chunks in `{result['collection']}`", "",
             "| mode | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for mode, scores in result["by_mode"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{scores[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
