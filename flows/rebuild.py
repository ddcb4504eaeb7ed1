"""The `rebuild` and `rollback` flows: rebuild a collection into a new physical collection and swap readers to it
with no moment where a search fails or sees a half-built index (millrace.index.versions has the layout)."""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from blocks import load_settings
from flows.evaluate import EvaluationGateError
from flows.ingest import ReconciliationError, run_ingest
from millrace import clients, evaluate as ev
from millrace.config import ConfigError, Settings
from millrace.index import versions
from millrace.ledger.book import documents
from millrace.ledger.lease import Lease
from millrace.uris import canonical_source_uri

# Parameters as `= Field(default, description=...)`: Prefect 3.8 shows those descriptions in its run form (it drops
# the ones inside Annotated).
COLLECTION = "The logical collection (the name readers use); default from settings"
OPTIONS = "Setting overrides (MILLRACE_* names in lower case), as for the ingest flow"
GRACE = "Hours the replaced collection is kept, for a rollback, before it is dropped"


@task(name="reconcile-collection", task_run_name="reconcile {physical}", cache_policy=NO_CACHE)
def reconcile_collection(physical: str, settings: Settings) -> dict[str, Any]:
    """Every document's chunks in Milvus against the ledger, and the totals, for the whole new collection."""
    psettings = versions.physical_settings(settings, physical)
    store, ledger = clients.milvus_store(psettings), clients.ledger(psettings)
    mismatched = []
    for rows in ledger.pages(documents, documents.c.collection == physical, size=1000):
        in_milvus = store.chunk_ids([r["doc_id"] for r in rows])
        for row in rows:
            want = row["chunks"] if row["state"] != "deleted" else 0
            if len(in_milvus.get(row["doc_id"], ())) != want:
                mismatched.append({"source_uri": row["source_uri"], "milvus": len(in_milvus.get(row["doc_id"], ())),
                                   "ledger": want})
    milvus, expected = store.count(), ledger.chunk_total(physical)
    return {"ok": milvus == expected and not mismatched, "milvus_count": milvus, "ledger_count": expected,
            "mismatched_docs": mismatched[:20]}


@task(name="evaluation-gate", task_run_name="score {physical} on {dataset}", cache_policy=NO_CACHE)
def score_collection(physical: str, dataset: str, queries: dict[str, str], qrels: dict[str, dict[str, int]],
                     mode: str, settings: Settings) -> dict[str, float]:
    """nDCG@10, MAP@10, Recall@100 and MRR@10 of the new collection on the evaluation set's judged queries."""
    psettings = versions.physical_settings(settings, physical)
    found = ev.retrieve(clients.milvus_store(psettings), clients.embedder(psettings), queries, [mode])
    return ev.score(qrels, found[mode])


@task(name="warm-up", task_run_name="warm up {physical}", cache_policy=NO_CACHE)
def warm_up(physical: str, queries: list[str] | None, settings: Settings, wait_s: float = 120.0) -> dict[str, Any]:
    """Load the new collection, wait until a reader at the serving consistency sees all of it, and search it."""
    psettings = versions.physical_settings(settings, physical)
    store = clients.milvus_store(psettings)
    store.load()
    total = store.count()  # Strong: everything written
    level, started = psettings.search_consistency, time.monotonic()
    versions.wait_visible(store, total, wait_s)
    if not queries:  # a few of its own chunks' openings: each must find something
        rows = store.rows(None, ["text"])
        try:
            queries = [" ".join(r["text"].split()[:12]) for r in itertools.islice(rows, 5)]
        finally:
            rows.close()  # ends the query iterator
    mode = psettings.search_mode if psettings.search_mode != "auto" else \
        ("hybrid" if store.has_full_text() else "dense")
    vectors = clients.embedder(psettings).encode_queries(queries)
    t = time.perf_counter()
    found = store.search_many(vectors, queries, 5, mode=mode, consistency=level)
    empty = [q for q, hits in zip(queries, found) if not hits]
    if total and empty:
        raise ReconciliationError(f"warm-up searches found nothing in {physical} for {empty[:3]}; not swapping")
    return {"queries": len(queries), "mode": mode, "search_s": round(time.perf_counter() - t, 3),
            "visible_after_s": round(time.monotonic() - started, 2), "chunks": total}


def _scopes(settings: Settings, sources: list[str] | None, active: str) -> list[dict[str, Any]]:
    """What to ingest: the given sources with the run's include/exclude, else every whole source the active
    collection was ingested from (as each was scoped), else the configured sources."""
    plain = lambda s: {"source": canonical_source_uri(s), "include": settings.include, "exclude": settings.exclude}
    scopes = [plain(s) for s in sources] if sources else versions.full_scopes(settings, active)
    scopes = scopes or [plain(s) for s in settings.sources]
    if not scopes:
        raise ConfigError(f"no sources to rebuild {settings.collection} from: no finished whole-source run is "
                          "recorded for it; pass sources, or set MILLRACE_SOURCES")
    return scopes


@flow(name="rebuild", flow_run_name="rebuild {collection}")
def rebuild(
    collection: str | None = Field(None, description=COLLECTION),
    sources: list[str] | None = Field(None, description="Sources to ingest into the new collection; default: every "
                                      "whole source the active collection was ingested from (the ledger's runs), "
                                      "else MILLRACE_SOURCES"),
    model: str | None = Field(None, description="A new embedding model (folder) for the new collection"),
    embed_backend: str | None = Field(None, description="A new encoder backend: torch, onnx, onnx-int8, openvino"),
    chunk_size: int | None = Field(None, gt=0, description="A new chunk size in model tokens"),
    chunk_overlap: int | None = Field(None, ge=0, description="A new chunk overlap in model tokens"),
    eval_data_dir: str | None = Field(None, description="A BEIR data set (corpus, queries, qrels) whose corpus is "
                                      "among the sources: the gate scores the new collection on its queries"),
    min_ndcg: float | None = Field(None, ge=0, description="Refuse the swap when the new collection's nDCG@10 on "
                                   "the evaluation set is below this"),
    eval_split: str = Field("test", description="The evaluation set's qrels split"),
    eval_mode: str = Field("dense", description="Search mode the gate scores: dense, bm25 or hybrid"),
    warmup_queries: list[str] | None = Field(None, description="Searched on the new collection before the swap; "
                                             "default: the openings of a few of its chunks"),
    grace_hours: float = Field(24.0, ge=0, description=GRACE),
    options: dict[str, Any] | None = Field(None, description=OPTIONS),
) -> dict[str, Any]:
    """Ingest the sources into a new physical collection, reconcile, gate, warm it up, and swap the alias to it."""
    log = get_run_logger()
    settings = load_settings(**{**(options or {}), **({"collection": collection} if collection else {})})
    run_id, grace_s, logical = str(flow_run.get_id() or uuid.uuid4()), grace_hours * 3600, settings.collection
    overrides = {k: v for k, v in {"model": model, "embed_backend": embed_backend, "chunk_size": chunk_size,
                                   "chunk_overlap": chunk_overlap}.items() if v is not None}
    result: dict[str, Any] = {"collection": logical, "overrides": overrides, "swapped": False}
    # The whole rebuild holds the name's slot and lease: ingests triggered meanwhile wait, then write the new one.
    with Lease(clients.ledger(settings), logical, run_id, f"rebuild of {logical}",
                                          settings.lease_ttl_s, settings.lease_wait_s, on_wait=log.warning):
        result["retired"] = versions.retire_expired(settings)
        old = result["old"] = versions.active_physical(settings)
        if not clients.milvus_store(settings, old).exists():
            raise ConfigError(f"nothing to rebuild: collection {logical} has not been ingested yet")
        versions.check_swappable(settings)
        scopes = result["sources"] = _scopes(settings, sources, old)
        if eval_mode not in ev.MODES:
            raise ConfigError(f"eval_mode must be one of {ev.MODES}")
        gate = ev.load_beir(eval_data_dir, eval_split) if eval_data_dir else None
        if gate is not None and canonical_source_uri(str(gate.corpus)) not in {s["source"] for s in scopes}:
            raise ConfigError(f"the evaluation corpus {gate.corpus} is not among the rebuild's sources: the gate scores "
                              "the collection that will serve, so its corpus must be indexed there (add it to sources)")
        new = result["new"] = versions.new_version(settings, overrides, grace_s)
        log.info("rebuilding %s: %s -> %s from %d source(s)", logical, old, new, len(scopes))
        try:
            result["runs"] = [_brief(run_ingest(s["source"], settings.model_copy(
                update={"include": s["include"], "exclude": s["exclude"]}), physical=new)) for s in scopes]
            check = result["reconciliation"] = reconcile_collection(new, settings)
            if not check["ok"]:
                raise ReconciliationError(f"{new}: Milvus holds {check['milvus_count']} chunks, the ledger expects "
                                          f"{check['ledger_count']}; off: {check['mismatched_docs'][:5]}")
            result["missing_documents"] = versions.missing_documents(settings, old, new)
            if gate is not None:
                scores = score_collection(new, gate.name, gate.queries, gate.qrels, eval_mode, settings)
                result["gate"] = {"dataset": gate.name, "mode": eval_mode, "min_ndcg": min_ndcg, **scores}
                if min_ndcg is not None and scores["ndcg@10"] < min_ndcg:
                    raise EvaluationGateError(f"{new} scores nDCG@10 {scores['ndcg@10']:.4f} on {gate.name}, below "
                                              f"the required {min_ndcg}: not swapped; {old} keeps serving")
            result["warm_up"] = warm_up(new, warmup_queries, settings)
            versions.swap(settings, new, grace_s)
            result.update(swapped=True, swapped_at=time.time(), old_kept_until=time.time() + grace_s)
        except BaseException as exc:
            versions.abandon(settings, new, grace_s)
            result["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            result["counts"] = clients.ledger(settings).counts(new)
            create_markdown_artifact(key=f"rebuild-{_key(logical)}", markdown=_report(result),
                                     description=f"rebuild of {logical}")
    return result


@flow(name="rollback", flow_run_name="rollback {collection}")
def rollback(
    collection: str | None = Field(None, description=COLLECTION),
    grace_hours: float = Field(24.0, ge=0, description=GRACE),
    options: dict[str, Any] | None = Field(None, description=OPTIONS),
) -> dict[str, Any]:
    """Swap the collection's alias back to the physical collection that served before the last swap."""
    log = get_run_logger()
    settings = load_settings(**{**(options or {}), **({"collection": collection} if collection else {})})
    run_id, logical = str(flow_run.get_id() or uuid.uuid4()), settings.collection
    with Lease(clients.ledger(settings), logical, run_id, f"rollback of {logical}",
                                          settings.lease_ttl_s, settings.lease_wait_s, on_wait=log.warning):
        frm, to = versions.rollback(settings, grace_hours * 3600)
    log.info("%s: rolled back from %s to %s", logical, frm, to)
    create_markdown_artifact(key=f"rollback-{_key(logical)}", description=f"rollback of {logical}",
                             markdown=f"# Rollback of `{logical}`\n\nnow served by `{to}` (was `{frm}`, kept "
                                      f"{grace_hours:g} h for a roll forward)")
    return {"collection": logical, "from": frm, "to": to}


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("source", "seen", "indexed", "failed", "quarantined", "chunks_written", "reconciled", "seconds")
    return {k: summary.get(k) for k in keys}


def _report(r: dict[str, Any]) -> str:
    check, gate, warm = r.get("reconciliation") or {}, r.get("gate"), r.get("warm_up")
    lines = [f"# Rebuild of `{r['collection']}`: {'swapped' if r['swapped'] else 'NOT swapped'}", "",
             f"- old physical collection: `{r.get('old', '?')}`" + (", kept for rollback" if r["swapped"] else
                                                                   ", still serving"),
             f"- new physical collection: `{r.get('new', '-')}`" + (f" with {r['overrides']}" if r["overrides"] else ""),
             f"- documents: {', '.join(f'{n} {s}' for s, n in sorted((r.get('counts') or {}).items())) or 'none'}"]
    if check:
        lines.append(f"- reconciliation: {'OK' if check['ok'] else 'MISMATCH'} (Milvus {check['milvus_count']} "
                     f"chunks, ledger {check['ledger_count']})")
    if r.get("missing_documents"):
        lines.append(f"- served by the old collection but in no source of the rebuild: {r['missing_documents']}")
    if gate:
        lines.append(f"- gate on {gate['dataset']} ({gate['mode']}): nDCG@10 {gate['ndcg@10']:.4f}"
                     + (f", required {gate['min_ndcg']}" if gate["min_ndcg"] is not None else ""))
    if warm:
        lines.append(f"- warm-up: {warm['queries']} {warm['mode']} searches in {warm['search_s']}s, all "
                     f"{warm['chunks']} chunks visible after {warm['visible_after_s']}s")
    if r.get("retired"):
        lines.append(f"- dropped after their grace period: {', '.join(r['retired'])}")
    if r.get("error"):
        lines.append(f"- stopped: {r['error']}")
    lines += ["", "| source | seen | indexed | failed | quarantined | chunks | s |", "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(x[k]) for k in ("source", "seen", "indexed", "failed", "quarantined",
                                                    "chunks_written", "seconds")) + " |" for x in r.get("runs") or []]
    return "\n".join(lines)


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
