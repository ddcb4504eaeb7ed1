"""The ledger: one row per document and collection, with its state and why; SQLite or any SQLAlchemy URL."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine, delete, func, select)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from millrace.records import DocState, DocSummary, Failure

meta = MetaData()
documents = Table(
    "documents", meta,
    Column("collection", String(255), primary_key=True),
    Column("doc_id", String(64), primary_key=True),
    Column("source_uri", Text, nullable=False),
    Column("fingerprint", String(255), nullable=False, default=""),
    Column("content_hash", String(64), nullable=False, default=""),
    Column("pipeline_version", String(255), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("reason", String(64), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
    Column("stage", String(16), nullable=False, default=""),
    Column("chunks", Integer, nullable=False, default=0),
    Column("content_type", String(255), nullable=False, default=""),
    Column("title", Text, nullable=False, default=""),
    Column("updated_at", Float, nullable=False),
)

runs = Table(
    "runs", meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("collection", String(255), nullable=False, index=True),
    Column("source", Text, nullable=False),
    Column("finished_at", Float, nullable=False),
    Column("reconciled", Integer, nullable=False),
    Column("milvus_count", Integer, nullable=False),
    Column("ledger_count", Integer, nullable=False),
    Column("mismatched", Text, nullable=False, default="[]"),
    Column("summary", Text, nullable=False, default="{}"),
)


class Ledger:
    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, future=True)
        meta.create_all(self.engine)

    def _upsert(self, conn, row: dict) -> None:
        row["updated_at"] = time.time()
        if self.engine.dialect.name in ("sqlite", "postgresql"):
            ins = (sqlite_insert if self.engine.dialect.name == "sqlite" else _pg_insert())(documents).values(**row)
            conn.execute(ins.on_conflict_do_update(index_elements=["collection", "doc_id"],
                                                   set_={k: v for k, v in row.items() if k not in ("collection", "doc_id")}))
        else:  # portable fallback
            conn.execute(delete(documents).where(documents.c.collection == row["collection"],
                                                 documents.c.doc_id == row["doc_id"]))
            conn.execute(documents.insert().values(**row))

    @staticmethod
    def _indexed_row(collection: str, doc: DocSummary, pipeline_version: str) -> dict:
        return dict(collection=collection, doc_id=doc.doc_id, source_uri=doc.source_uri, fingerprint=doc.fingerprint,
                    content_hash=doc.content_hash, pipeline_version=pipeline_version, state=DocState.indexed.value,
                    reason="", detail="", stage="", chunks=doc.chunks, content_type=doc.content_type, title=doc.title)

    @staticmethod
    def _failed_row(collection: str, failure: Failure, pipeline_version: str, state: DocState) -> dict:
        return dict(collection=collection, doc_id=failure.doc_id, source_uri=failure.source_uri,
                    fingerprint=failure.fingerprint, content_hash="", pipeline_version=pipeline_version,
                    state=state.value, reason=failure.reason, detail=failure.detail[:2000], stage=failure.stage,
                    chunks=0, content_type="", title="")

    def record_batch(self, collection: str, docs: list[DocSummary], failures: list[Failure],
                     pipeline_version: str) -> None:
        """A batch's outcome in one transaction: quality failures are quarantined, the others failed."""
        with self.engine.begin() as conn:
            for doc in docs:
                self._upsert(conn, self._indexed_row(collection, doc, pipeline_version))
            for f in failures:
                state = DocState.quarantined if f.stage == "quality" else DocState.failed
                self._upsert(conn, self._failed_row(collection, f, pipeline_version, state))

    def record_indexed(self, collection: str, doc: DocSummary, pipeline_version: str) -> None:
        self.record_batch(collection, [doc], [], pipeline_version)

    def record_failed(self, collection: str, failure: Failure, pipeline_version: str,
                      state: DocState = DocState.failed) -> None:
        with self.engine.begin() as conn:
            self._upsert(conn, self._failed_row(collection, failure, pipeline_version, state))

    def record_deleted(self, collection: str, doc_ids: list[str]) -> None:
        with self.engine.begin() as conn:
            conn.execute(documents.update().where(documents.c.collection == collection,
                                                  documents.c.doc_id.in_(doc_ids))
                         .values(state=DocState.deleted.value, chunks=0, reason="", detail="",
                                 updated_at=time.time()))

    def rows(self, collection: str, states: list[str] | None = None) -> list[dict]:
        q = select(documents).where(documents.c.collection == collection)
        if states:
            q = q.where(documents.c.state.in_(states))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(documents.c.source_uri))]

    def counts(self, collection: str) -> dict[str, int]:
        q = (select(documents.c.state, func.count()).where(documents.c.collection == collection)
             .group_by(documents.c.state))
        with self.engine.connect() as conn:
            return {state: n for state, n in conn.execute(q)}

    def record_run(self, collection: str, source: str, reconciliation: dict, summary: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(
                collection=collection, source=source, finished_at=time.time(), reconciled=int(reconciliation["ok"]),
                milvus_count=reconciliation["milvus_count"], ledger_count=reconciliation["ledger_count"],
                mismatched=json.dumps(reconciliation["mismatched_docs"]), summary=json.dumps(summary, default=str)))

    def last_run(self, collection: str) -> dict | None:
        q = select(runs).where(runs.c.collection == collection).order_by(runs.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        r = dict(row._mapping)
        return {"source": r["source"], "finished_at": r["finished_at"], "reconciled": bool(r["reconciled"]),
                "milvus_count": r["milvus_count"], "ledger_count": r["ledger_count"],
                "mismatched_docs": json.loads(r["mismatched"])}

    def chunk_total(self, collection: str) -> int:
        q = select(func.coalesce(func.sum(documents.c.chunks), 0)).where(
            documents.c.collection == collection, documents.c.state == DocState.indexed.value)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())


def _pg_insert():
    from sqlalchemy.dialects.postgresql import insert

    return insert
