"""The ingestion stages as plain functions; flows/ and tasks/ only orchestrate them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from pydantic import BaseModel, Field

from millrace import clients
from millrace.config import Settings
from millrace.embed import model_id
from millrace.extract import ExtractError
from millrace.jsonl import RECORD_MEDIA_TYPE, SUFFIXES, record_document
from millrace.ledger import Ledger
from millrace.quality import apply_gate
from millrace.records import TRANSIENT_REASONS, BatchResult, DocState, DocSummary, Failure, SourceObject
from millrace.sources import relative_name, wanted
from millrace.store import MilvusStore


def pipeline_version(settings: Settings) -> str:
    """Everything that changes chunk ids or vectors; a change re-processes the documents it affects."""
    return f"{model_id(settings)}|chunk={settings.chunk_size}/{settings.chunk_overlap}|v1"


class Scope(BaseModel):
    """What a run listed, and so all it may delete: a source, its filters and, optionally, named objects."""

    source: str  # canonical URI of the folder, file, record file or S3 prefix
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    objects: list[str] | None = None  # decoded paths relative to `source`; None: everything under it

    @property
    def full(self) -> bool:
        return not self.include and not self.exclude and self.objects is None

    def relative(self, uri: str) -> str | None:
        if is_record_uri(self.source):
            return unquote(uri.split("#", 1)[1]) if uri.startswith(self.source + "#") else None
        return relative_name(self.source, uri)

    def contains(self, uri: str) -> bool:
        rel = self.relative(uri)
        if rel is None:
            return False
        if is_record_uri(self.source):
            return self.objects is None or rel in self.objects
        return wanted(rel, self.include, self.exclude) and (self.objects is None or rel in self.objects)

    def describe(self) -> str:
        parts = [self.source]
        parts += [f"include {p}" for p in self.include] + [f"exclude {p}" for p in self.exclude]
        if self.objects is not None:
            parts.append(f"{len(self.objects)} named object(s)")
        return ", ".join(parts)


def is_record_uri(uri: str) -> bool:
    return uri.endswith(SUFFIXES)


@dataclass
class Plan:
    todo: list[SourceObject] = field(default_factory=list)
    skipped: list[SourceObject] = field(default_factory=list)
    waiting: list[SourceObject] = field(default_factory=list)  # transient failures not yet due for a retry
    gone: list[dict] = field(default_factory=list)  # in-scope ledger rows whose source object disappeared
    reusable: set[str] = field(default_factory=set)  # hold chunks of this model: their vectors can be reused

    @property
    def seen(self) -> int:
        return len(self.todo) + len(self.skipped) + len(self.waiting)


def plan_run(objects: list[SourceObject], scope: Scope | str, ledger: Ledger, collection: str, version: str,
             retry_failed: bool = False, now: float | None = None) -> Plan:
    """Split a listing into work and skips, and find the documents of the scope deleted at the source.

    Unchanged indexed documents are skipped; failed ones too, except transient failures whose next attempt is
    due, and every failure with `retry_failed`. Only rows inside `scope` can be gone."""
    scope = Scope(source=scope) if isinstance(scope, str) else scope
    now = time.time() if now is None else now
    known = ledger.rows_for(collection, (o.doc_id for o in objects))
    plan = Plan()
    model = version.split("|", 1)[0]
    for obj in objects:
        row = known.get(obj.doc_id)
        if row is None or row["state"] == DocState.deleted.value or row["fingerprint"] != obj.fingerprint \
                or row["pipeline_version"] != version or retry_failed and row["state"] != DocState.indexed.value:
            plan.todo.append(obj)
        elif row["state"] == DocState.indexed.value or row["reason"] not in TRANSIENT_REASONS:
            plan.skipped.append(obj)
        elif now >= row["next_attempt_at"]:
            plan.todo.append(obj)
        else:
            plan.waiting.append(obj)
    plan.reusable = {o.doc_id for o in plan.todo if (row := known.get(o.doc_id)) is not None and row["chunks"] > 0
                     and row["pipeline_version"].split("|", 1)[0] == model}
    listed = {o.doc_id for o in objects}
    plan.gone = [{"doc_id": r["doc_id"], "source_uri": r["source_uri"]} for r in ledger.iter_rows(collection)
                 if r["doc_id"] not in listed and r["state"] != DocState.deleted.value and scope.contains(r["source_uri"])]
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


def _injected_fault(obj: SourceObject, settings: Settings) -> None:
    """Test-only: a file <fault_dir>/<doc_id> makes this document's next extraction fail with its reason, once."""
    marker = Path(settings.fault_dir) / obj.doc_id
    try:
        reason = marker.read_text().strip() or "timeout"
        marker.unlink()
    except FileNotFoundError:  # none, or another worker took it
        return
    raise ExtractError(reason, "injected fault")


def extract(obj: SourceObject, data: bytes, settings: Settings):
    if settings.fault_dir:
        _injected_fault(obj, settings)
    if obj.media_type == RECORD_MEDIA_TYPE:
        return record_document(obj, data)
    return clients.extractor(settings).extract(obj, data)


def process_batch(objects: list[SourceObject], source_uri: str, settings: Settings,
                  reuse: dict | None = None) -> BatchResult:
    """Read, extract, chunk, check the text, embed and check the vectors of a batch; per-document failures are
    returned, never raised.

    `reuse` maps content hashes to vectors the index already holds for this model: those chunks skip the model.
    Text that fails the text expectations is quarantined before embedding, so it never costs a forward pass."""
    source = clients.source(source_uri, settings)
    chunker, embedder = clients.chunker(settings), clients.embedder(settings)
    result = BatchResult()
    timings = {"read": 0.0, "extract": 0.0, "chunk": 0.0, "embed": 0.0, "quality": 0.0}
    for obj in objects:
        fail = dict(doc_id=obj.doc_id, source_uri=obj.uri, fingerprint=obj.fingerprint)
        if obj.size > settings.max_doc_bytes:
            result.failures.append(Failure(**fail, stage="read", reason="too_large",
                                           detail=f"{obj.size} bytes > limit {settings.max_doc_bytes}"))
            continue
        t = time.perf_counter()
        try:
            data = source.read(obj)  # S3 reads retry inside the source; a local read error is not worth a retry
        except Exception as exc:  # gone since the listing, permissions, a dead mount: the next run tries again
            result.failures.append(Failure(**fail, stage="read", reason="io", detail=f"{type(exc).__name__}: "
                                                                                    f"{str(exc)[:300]}"))
            continue
        finally:
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
    max_chars = settings.chunk_size * 40
    t = time.perf_counter()
    quality = apply_gate(result, embedder.dim, max_chars, phase="text").expectations
    timings["quality"] += time.perf_counter() - t
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
    quality += apply_gate(result, embedder.dim, max_chars, phase="vector").expectations
    timings["quality"] += time.perf_counter() - t
    result.quality = quality
    result.stage_seconds = timings
    return result


def remove_gone(store: MilvusStore, ledger: Ledger, collection: str, gone: list[dict], run_id: str = "") -> int:
    """Documents deleted at the source leave Milvus, then the ledger marks them deleted."""
    for i in range(0, len(gone), 500):
        page = gone[i:i + 500]
        store.delete_docs({row["doc_id"]: set() for row in page})
        ledger.record_deleted(collection, [row["doc_id"] for row in page], run_id)
    return len(gone)


def reconcile(store: MilvusStore, ledger: Ledger, collection: str, touched: set[str], page: int = 1000) -> dict:
    """Ledger totals against Milvus count(*), for the collection and for each document this run touched.

    Read in pages, so a run over a large corpus checks every touched document without holding all their ids."""
    milvus, expected = store.count(), ledger.chunk_total(collection)
    mismatched = []
    ids = sorted(touched)
    for i in range(0, len(ids), page):
        part = ids[i:i + page]
        rows = ledger.rows_for(collection, part)
        in_milvus = store.chunk_ids(part)
        for doc_id in part:
            row = rows.get(doc_id)
            want = row["chunks"] if row is not None and row["state"] != DocState.deleted.value else 0
            have = len(in_milvus.get(doc_id, ()))
            if have != want:
                mismatched.append({"doc_id": doc_id, "source_uri": row["source_uri"] if row else "", "milvus": have,
                                   "ledger": want})
    return {"ok": milvus == expected and not mismatched, "milvus_count": milvus, "ledger_count": expected,
            "mismatched_docs": mismatched}
