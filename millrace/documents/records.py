"""Typed records passed between pipeline stages."""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, PlainSerializer, PlainValidator

# Failures that can succeed next time without the document changing: later runs retry them on their own, backing
# off across runs. "worker_lost": the worker process died (JVM crash, OOM) every time it held the document alone.
# Every other reason (encrypted, corrupt, empty, no_text, unsupported, too_large, the quality
# codes) is permanent: retried only when the document changes or with --retry-failed.
TRANSIENT_REASONS = frozenset({"timeout", "unreachable", "io", "worker_lost"})


def doc_id_for(uri: str) -> str:
    """Stable document id derived from the canonical source URI."""
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:32]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _float32(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"a vector must be one-dimensional, got shape {array.shape}")
    return array


# A float32 array, not a list of Python floats: 1.5 KB per 384-d vector instead of ~12 KB, and no per-float
# objects for Dask to pickle. JSON dumps give a plain list.
Vector = Annotated[Any, PlainValidator(_float32), PlainSerializer(lambda a: None if a is None else a.tolist(),
                                                                   when_used="json")]


class DocState(str, Enum):
    indexed = "indexed"
    failed = "failed"
    quarantined = "quarantined"
    deleted = "deleted"


class SourceObject(BaseModel):
    """One object found at a source, before it is read."""

    uri: str
    doc_id: str
    size: int
    fingerprint: str  # ETag, or size+mtime: whatever changes when the content does
    media_type: str = ""  # set by sources whose objects need no parser (JSONL records); empty: Tika decides
    modified: float = 0.0  # last modification (S3: upload) time, epoch seconds; 0: unknown

    @classmethod
    def make(cls, uri: str, size: int, fingerprint: str, media_type: str = "", modified: float = 0.0) -> "SourceObject":
        return cls(uri=uri, doc_id=doc_id_for(uri), size=size, fingerprint=fingerprint, media_type=media_type,
                   modified=modified)


class Page(BaseModel):
    number: int  # 1-based; 0 when the format has no pages
    text: str


class DocSummary(BaseModel):
    """A processed document without its text: what the ledger keeps."""

    doc_id: str
    source_uri: str
    fingerprint: str
    content_hash: str
    content_type: str = ""
    title: str = ""
    page_count: int = 0
    chunks: int = 0
    modified: float = 0.0  # the source object's modification time (SourceObject.modified)


class Document(DocSummary):
    """Extracted text and metadata of one source object."""

    language: str = ""
    pages: list[Page] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(p.text for p in self.pages)


class Chunk(BaseModel):
    """A piece of a document sized for the embedding model, with its citation fields."""

    chunk_id: str
    doc_id: str
    chunk_index: int
    text: str
    # The physical collection that served the hit (a rebuild swaps the alias between them: see millrace.index.versions).
    collection: str = ""
    source_uri: str
    title: str = ""
    page: int = 0
    content_hash: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    vector: Vector | None = None


class Failure(BaseModel):
    """A document that could not be indexed, and why."""

    doc_id: str
    source_uri: str
    fingerprint: str = ""
    stage: str  # read | extract | chunk | embed | upsert
    reason: str  # short machine-readable code, e.g. "encrypted", "corrupt", "empty"
    detail: str = ""

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT_REASONS


class BatchResult(BaseModel):
    """What processing one batch of documents produced."""

    documents: list[DocSummary] = Field(default_factory=list)
    chunks: list[Chunk] = Field(default_factory=list)
    failures: list[Failure] = Field(default_factory=list)
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    embedded: int = 0  # chunks the model encoded
    reused: int = 0  # chunks whose vector was reused by content hash
    quality: list[dict[str, Any]] = Field(default_factory=list)  # one entry per expectation


class Hit(BaseModel):
    """One search result with everything needed to cite it."""

    score: float
    chunk_id: str
    doc_id: str
    source_uri: str
    title: str
    page: int
    chunk_index: int
    text: str
    # The physical collection that served the hit (a rebuild swaps the alias between them: see millrace.index.versions).
    collection: str = ""
