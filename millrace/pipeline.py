"""The ingestion stages as plain functions; flows/ and tasks/ only orchestrate them."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from functools import lru_cache

from millrace.chunk import Chunker
from millrace.config import Settings
from millrace.embed import Embedder, model_id
from millrace.extract import ExtractError, make_extractor
from millrace.jsonl import RECORD_MEDIA_TYPE, record_document
from millrace.ledger import Ledger
from millrace.quality import apply_gate
from millrace.records import BatchResult, DocState, DocSummary, Failure, SourceObject
from millrace.retry import with_retries
from millrace.sources import open_source
from millrace.store import MilvusStore


def pipeline_version(settings: Settings) -> str:
    """Everything that changes chunk ids or vectors; a change re-processes the documents it affects."""
    return f"{model_id(settings)}|chunk={settings.chunk_size}/{settings.chunk_overlap}|v1"


@dataclass
class Plan:
    todo: list[SourceObject] = field(default_factory=list)
    skipped: list[SourceObject] = field(default_factory=list)
    gone: list[dict] = field(default_factory=list)  # ledger rows whose source object disappeared
    reusable: set[str] = field(default_factory=set)  # indexed with this model: their vectors can be reused

    @property
    def seen(self) -> int:
        return len(self.todo) + len(self.skipped)


def plan_run(objects: list[SourceObject], source_uri: str, ledger: Ledger, collection: str, version: str,
             retry_failed: bool = False) -> Plan:
    """Split a listing into work and skips by fingerprint, and find documents deleted at the source."""
    known = {r["doc_id"]: r for r in ledger.rows(collection)}
    plan = Plan()
    for obj in objects:
        row = known.get(obj.doc_id)
        unchanged = row is not None and row["fingerprint"] == obj.fingerprint and row["pipeline_version"] == version
        settled = row is not None and (row["state"] == DocState.indexed.value or not retry_failed)
        (plan.skipped if unchanged and settled and row["state"] != DocState.deleted.value else plan.todo).append(obj)
    model = version.split("|", 1)[0]
    plan.reusable = {o.doc_id for o in plan.todo if (row := known.get(o.doc_id)) is not None
                     and row["state"] == DocState.indexed.value and row["pipeline_version"].split("|", 1)[0] == model}
    listed = {o.doc_id for o in objects}
    prefix = source_uri.rstrip("/") + "/"
    plan.gone = [r for r in known.values() if r["doc_id"] not in listed and r["state"] != DocState.deleted.value
                 and (r["source_uri"].startswith((prefix, source_uri + "#")) or r["source_uri"] == source_uri)]
    return plan


def batch_size_for(n_docs: int, docs_per_batch: int, parallel: int, most: int = 256) -> int:
    """Documents per batch: the setting, or (0) enough batches to keep `parallel` task slots busy, at most `most`.

    Fewer, larger batches cut per-task overhead (Prefect task runs, GX validations, result transfers) and give the
    model longer runs of length-sorted texts; a few batches per slot keep the tail short."""
    if docs_per_batch:
        return docs_per_batch
    return max(1, min(most, -(-n_docs // max(1, 4 * parallel))))


def make_batches(objects: list[SourceObject], docs_per_batch: int, max_batch_bytes: int = 64 * 1024 * 1024
                 ) -> list[list[SourceObject]]:
    """Batches of documents (never of chunks), cut early when their bytes add up."""
    batches: list[list[SourceObject]] = []
    current: list[SourceObject] = []
    size = 0
    for obj in objects:
        if current and (len(current) >= docs_per_batch or size + obj.size > max_batch_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(obj)
        size += obj.size
    if current:
        batches.append(current)
    return batches


@lru_cache(maxsize=4)
def _components(settings_json: str):
    """Chunker and embedder for this process: built once, reused by every batch it runs."""
    settings = Settings.model_validate_json(settings_json)
    return Chunker(settings), Embedder(settings)


@lru_cache(maxsize=4)
def _extractor(settings_json: str):
    # Separate and lazy: a record corpus never needs Tika, so its workers never start a JVM.
    return make_extractor(Settings.model_validate_json(settings_json))


def extract(obj: SourceObject, data: bytes, settings: Settings):
    if obj.media_type == RECORD_MEDIA_TYPE:
        return record_document(obj, data)
    return _extractor(_settings_key(settings)).extract(obj, data)


def process_batch(objects: list[SourceObject], source_uri: str, settings: Settings,
                  reuse: dict[str, list[float]] | None = None) -> BatchResult:
    """Read, extract, chunk, embed and quality-check a batch; per-document failures are returned, never raised.

    `reuse` maps content hashes to vectors the index already holds for this model: those chunks skip the model."""
    source = open_source(source_uri, settings)
    chunker, embedder = _components(_settings_key(settings))
    result = BatchResult()
    timings = {"read": 0.0, "extract": 0.0, "chunk": 0.0, "embed": 0.0}
    for obj in objects:
        fail = dict(doc_id=obj.doc_id, source_uri=obj.uri, fingerprint=obj.fingerprint)
        if obj.size > settings.max_doc_bytes:
            result.failures.append(Failure(**fail, stage="read", reason="too_large",
                                           detail=f"{obj.size} bytes > limit {settings.max_doc_bytes}"))
            continue
        t = time.perf_counter()
        try:
            data = with_retries(lambda: source.read(obj), settings.retry_delays, what=f"read {obj.uri}")
        except Exception as exc:
            result.failures.append(Failure(**fail, stage="read", reason="unreadable", detail=str(exc)[:300]))
            continue
        timings["read"] += time.perf_counter() - t
        t = time.perf_counter()
        try:
            doc = extract(obj, data, settings)
        except ExtractError as exc:
            result.failures.append(Failure(**fail, stage="extract", reason=exc.reason, detail=exc.detail))
            continue
        finally:
            timings["extract"] += time.perf_counter() - t
        t = time.perf_counter()
        chunks = chunker.split(doc)
        timings["chunk"] += time.perf_counter() - t
        if not chunks:
            result.failures.append(Failure(**fail, stage="chunk", reason="no_text", detail="no text after cleaning"))
            continue
        result.chunks.extend(chunks)
        summary = DocSummary.model_validate(doc.model_dump(include=set(DocSummary.model_fields)))
        result.documents.append(summary.model_copy(update={"chunks": len(chunks)}))
    t = time.perf_counter()
    reuse = reuse or {}
    todo = [c for c in result.chunks if c.content_hash not in reuse]
    for chunk, vector in zip(todo, embedder.encode([c.text for c in todo])):
        chunk.vector = vector
    for chunk in result.chunks:
        if chunk.vector is None:
            chunk.vector = reuse[chunk.content_hash]
    result.embedded, result.reused = len(todo), len(result.chunks) - len(todo)
    timings["embed"] += time.perf_counter() - t
    t = time.perf_counter()
    result.quality = apply_gate(result, embedder.dim, max_chars=settings.chunk_size * 40).expectations
    timings["quality"] = time.perf_counter() - t
    result.stage_seconds = timings
    return result


def _settings_key(settings: Settings) -> str:
    data = settings.model_dump(mode="json")
    data["milvus_token"] = settings.milvus_token.get_secret_value()
    data["s3_secret"] = settings.s3_secret.get_secret_value()
    return json.dumps(data, sort_keys=True)


def write_chunks(store: MilvusStore, result: BatchResult, existing: dict[str, set[str]] | None = None) -> int:
    """Upsert a batch's chunks, then remove each document's chunks from older versions.

    New rows land before old ones go, so a crash in between leaves the document searchable. `existing` (chunk ids
    per document, read once for the whole run) saves a query per batch; without it they are looked up here."""
    stored = None if existing is None else set().union(*existing.values())
    written = store.upsert(result.chunks, stored=stored)
    if os.environ.get("MILLRACE_FAULT_INJECT") == "kill-after-upsert":
        # Fault injection for the crash-safety test: die between the write of the new version and the
        # removal of the old one, the window that must never lose a document.
        os.kill(os.getpid(), signal.SIGKILL)
    # The index mirrors the ledger: a document that failed this time keeps no chunks.
    keep: dict[str, set[str]] = {d.doc_id: set() for d in result.documents} | {f.doc_id: set() for f in result.failures}
    for c in result.chunks:
        keep[c.doc_id].add(c.chunk_id)
    if existing is None:
        store.delete_docs(keep)
    else:
        stale = set().union(*(existing.get(doc, set()) - ids for doc, ids in keep.items()))
        store.delete_ids(stale)
    return written


def record_batch(ledger: Ledger, collection: str, result: BatchResult, version: str) -> None:
    ledger.record_batch(collection, result.documents, result.failures, version)


def remove_gone(store: MilvusStore, ledger: Ledger, collection: str, gone: list[dict]) -> int:
    store.delete_docs({row["doc_id"]: set() for row in gone})
    if gone:
        ledger.record_deleted(collection, [row["doc_id"] for row in gone])
    return len(gone)


def reconcile(store: MilvusStore, ledger: Ledger, collection: str, touched: set[str]) -> dict:
    """Ledger totals against Milvus count(*), for the collection and for each document this run touched."""
    milvus, expected = store.count(), ledger.chunk_total(collection)
    in_milvus = store.chunk_ids(touched)
    mismatched = []
    for row in ledger.rows(collection):
        if row["doc_id"] in touched:
            want = row["chunks"] if row["state"] == DocState.indexed.value else 0
            have = len(in_milvus.get(row["doc_id"], ()))
            if have != want:
                mismatched.append({"doc_id": row["doc_id"], "source_uri": row["source_uri"], "milvus": have,
                                   "ledger": want})
    return {"ok": milvus == expected and not mismatched, "milvus_count": milvus, "ledger_count": expected,
            "mismatched_docs": mismatched}
