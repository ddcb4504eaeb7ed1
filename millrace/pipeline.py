"""The ingestion stages as plain functions; flows/ and tasks/ only orchestrate them."""

from __future__ import annotations

import time

from millrace import clients
from millrace.config import Settings
from millrace.documents.embed import model_id
from millrace.documents.extract import ExtractError
from millrace.documents.quality import apply_gate
from millrace.documents.records import BatchResult, DocState, DocSummary, Failure, SourceObject
from millrace.index.store import MilvusStore
from millrace.ledger.book import Ledger, documents
from millrace.observe import telemetry
from millrace.sources.jsonl import RECORD_MEDIA_TYPE, record_document


def pipeline_version(settings: Settings) -> str:
    """Everything that changes chunk ids or vectors; a change re-processes the documents it affects."""
    return f"{model_id(settings)}|chunk={settings.chunk_size}/{settings.chunk_overlap}|v1"


def batch_size_for(n_docs: int, docs_per_batch: int, parallel: int, most: int = 256, least: int = 32) -> int:
    """Documents per batch: the setting, or (0) enough batches to keep `parallel` task slots busy, at most `most`.

    Fewer, larger batches cut per-task overhead (Prefect task runs, GX validations, result transfers) and give the
    model longer runs of length-sorted texts; a few batches per slot keep the tail short. A small run (a few dozen
    changed files) gets one batch per slot rather than four of fewer than `least` documents:
    each batch pays Prefect's task start on its worker, two GX validations and a Strong Milvus read whatever its
    size (~0.3-0.5 s of CPU, about what 20 small documents cost). Big documents are kept apart by make_batches'
    byte limit instead."""
    if docs_per_batch:
        return docs_per_batch
    slots = max(1, parallel)
    return max(1, min(most, max(-(-n_docs // (4 * slots)), min(least, n_docs // slots))))


def round_batch_size(n_docs: int, docs_per_batch: int, parallel: int, most: int = 256) -> int:
    """Documents per batch in a draining round: the fewest batches that fill the slots (or fill them the fewest
    times `most` allows), of near-equal size.

    Rounds follow each other every few seconds under load, so what a batch costs whatever its size (Prefect's task
    runs on the worker and in the flow, GX validations, a Strong Milvus read) is paid every round: with four batches
    per slot (batch_size_for), the workers spent 17 % more CPU on a 2,000-upload burst than on a batch ingest of the
    same files; with this, 2 % (BENCHMARKS "Continuous indexing"). Whole waves leave no lone batch running at the end
    of a round while the other slots idle."""
    if docs_per_batch:
        return docs_per_batch
    slots = max(1, parallel)
    waves = max(1, -(-n_docs // (slots * most)))
    return max(1, -(-n_docs // (slots * waves)))


def make_batches(objects: list[SourceObject], docs_per_batch: int, max_batch_bytes: int = 8 * 1024 * 1024
                 ) -> list[list[SourceObject]]:
    """Batches of documents (never of chunks), cut early when their bytes add up: 8 MiB of PDFs is seconds of work
    on a worker, enough to pay a batch's fixed cost, and little enough that two slots share a run of them."""
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


def extract(obj: SourceObject, data: bytes, settings: Settings):
    """One document's text and pages: a JSONL record's own, else Tika's."""
    if obj.media_type == RECORD_MEDIA_TYPE:
        return record_document(obj, data)
    with telemetry.span("tika.extract", doc_id=obj.doc_id, bytes=len(data)) as span:
        doc = clients.extractor(settings).extract(obj, data)
        span.set_attribute("millrace.content_type", doc.content_type)
        return doc


def process_batch(objects: list[SourceObject], source_uri: str, settings: Settings,
                  reuse: dict | None = None) -> BatchResult:
    """Read, extract, chunk, check the text, embed and check the vectors of a batch; per-document failures are
    returned, never raised.

    `reuse` maps content hashes to vectors the index already holds for this model: those chunks skip the model.
    Text that fails the text expectations is quarantined before embedding, so it never costs a forward pass."""
    source = clients.source(source_uri, settings)
    chunker = clients.chunker(settings)
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
        result.documents.append(summary.model_copy(update={"chunks": len(chunks), "modified": obj.modified}))
    # Loaded after extraction: a worker restarted under a document that kills it dies before paying for it.
    embedder = clients.embedder(settings)
    max_chars = settings.chunk_size * 40
    t = time.perf_counter()
    quality = apply_gate(result, embedder.dim, max_chars, phase="text").expectations
    timings["quality"] += time.perf_counter() - t
    t = time.perf_counter()
    reuse = reuse or {}
    todo = [c for c in result.chunks if c.content_hash not in reuse]
    with telemetry.span("embed", chunks=len(todo), reused=len(result.chunks) - len(todo)):
        vectors = embedder.encode([c.text for c in todo])
    for chunk, vector in zip(todo, vectors):
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


def reconcile(store: MilvusStore, ledger: Ledger, collection: str, run_id: str) -> dict:
    """Ledger totals against Milvus count(*), for the collection and for each document this run touched (the
    ledger rows it last changed), read a page at a time."""
    milvus, expected = store.count(), ledger.chunk_total(collection)
    mismatched = []
    for rows in ledger.pages(documents, documents.c.collection == collection, documents.c.run_id == run_id,
                             size=1000):
        in_milvus = store.chunk_ids([r["doc_id"] for r in rows])
        for row in rows:
            want = row["chunks"] if row["state"] != DocState.deleted.value else 0
            have = len(in_milvus.get(row["doc_id"], ()))
            if have != want:
                mismatched.append({"doc_id": row["doc_id"], "source_uri": row["source_uri"], "milvus": have,
                                   "ledger": want})
    return {"ok": milvus == expected and not mismatched, "milvus_count": milvus, "ledger_count": expected,
            "mismatched_docs": mismatched}
