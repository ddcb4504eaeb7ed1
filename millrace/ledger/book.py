"""The ledger: one row per document and collection, with its state and why; SQLite or any SQLAlchemy URL.

Besides the documents it holds each run (with its scope), the collection leases (millrace.ledger.lease) and the pending
outcomes of the running batch writes (millrace.index.staging): what a run has written to Milvus but not yet committed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Iterator

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine, delete, func, inspect,
                        select, text)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from millrace import registry
from millrace.config import Settings
from millrace.documents.records import DocState, DocSummary, Failure
from millrace.ledger.db import create_schema, in_lists, write_ahead_log

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
    # Chunks Milvus holds for the document: its indexed version's, also while a newer version has failed.
    Column("chunks", Integer, nullable=False, default=0),
    Column("content_type", String(255), nullable=False, default=""),
    Column("title", Text, nullable=False, default=""),
    Column("updated_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),  # consecutive transient failures
    Column("next_attempt_at", Float, nullable=False, default=0.0),  # no automatic retry before this time
    Column("run_id", String(64), nullable=False, default=""),  # the last run that changed this row
    # Freshness of the indexed version: the source's modification (upload) time, when its run committed, and the
    # difference, the document's upload-to-searchable time.
    Column("modified_at", Float, nullable=False, default=0.0),
    Column("indexed_at", Float, nullable=False, default=0.0),
    Column("fresh_s", Float, nullable=False, default=0.0),
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
    Column("run_id", String(64), nullable=False, default=""),
    Column("scope", Text, nullable=False, default="{}"),
    Column("state", String(16), nullable=False, default="done"),  # running | committing | done | failed
    Column("started_at", Float, nullable=False, default=0.0),
)

leases = Table(
    "leases", meta,
    Column("collection", String(255), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("holder", String(255), nullable=False),  # host:pid
    Column("source", Text, nullable=False, default=""),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

pending = Table(
    "pending", meta,
    Column("run_id", String(64), primary_key=True),
    Column("doc_id", String(64), primary_key=True),
    Column("collection", String(255), nullable=False, index=True),
    Column("row", Text, nullable=False),  # the documents row this run will commit
    Column("added", Text, nullable=False, default="[]"),  # chunk ids this run wrote that Milvus did not hold
    Column("stale", Text, nullable=False, default="[]"),  # chunk ids of the old version, removed at commit
)


listing = Table(
    "listing", meta,  # what a running run listed, and what it will do with each document (millrace.ledger.plan)
    Column("run_id", String(64), primary_key=True),
    Column("doc_id", String(64), primary_key=True),
    Column("uri", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("fingerprint", String(255), nullable=False),
    Column("media_type", String(255), nullable=False, default=""),
    Column("action", String(8), nullable=False, default=""),  # todo | reuse (todo, stored vectors reusable) | skip | wait
    Column("modified", Float, nullable=False, default=0.0),
)


collections = Table(
    "collections", meta,  # the physical collections behind each logical name (millrace.index.versions)
    Column("physical", String(255), primary_key=True),  # <logical>__v<N>; version 0 is the logical name itself
    Column("logical", String(255), nullable=False, index=True),  # the name readers use: a Milvus alias on a server
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # building | active | previous | failed | retired
    Column("model", Text, nullable=False, default=""),  # model id of its vectors
    Column("options", Text, nullable=False, default="{}"),  # settings a rebuild pinned (model, chunk_size, chunk_overlap)
    Column("created_at", Float, nullable=False),
    Column("activated_at", Float, nullable=False, default=0.0),  # last time it became active
    Column("retire_after", Float, nullable=False, default=0.0),  # dropped after this (previous/failed); 0: never
)


def _migrate(engine) -> None:
    """Add the columns newer code expects to tables an older ledger created (nullable ALTERs are portable)."""
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in meta.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for col in table.columns:
                if col.name not in have:
                    default = col.default.arg if col.default is not None and not callable(col.default.arg) else None
                    literal = "" if default is None else f" DEFAULT {default!r}" if isinstance(default, str) \
                        else f" DEFAULT {default}"
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {col.name} "
                                      f"{col.type.compile(engine.dialect)}{literal}"))


class Ledger:
    def __init__(self, url: str):
        kwargs: dict = {}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # Several processes (concurrent runs, status) share the file: wait for a writer instead of failing.
            kwargs["connect_args"] = {"timeout": 60}
        self.engine = create_engine(url, future=True, **kwargs)
        if self.engine.dialect.name == "sqlite":
            write_ahead_log(self.engine)
        create_schema(self.engine, meta, _migrate)

    def upsert_rows(self, conn, rows: Iterable[dict]) -> None:
        """Insert or update document rows; only the given fields change on an existing row."""
        for row in rows:
            row = {**row, "updated_at": time.time()}
            if self.engine.dialect.name in ("sqlite", "postgresql"):
                ins = (sqlite_insert if self.engine.dialect.name == "sqlite" else _pg_insert())(documents).values(**row)
                conn.execute(ins.on_conflict_do_update(
                    index_elements=["collection", "doc_id"],
                    set_={k: v for k, v in row.items() if k not in ("collection", "doc_id")}))
                continue
            key = (documents.c.collection == row["collection"], documents.c.doc_id == row["doc_id"])
            if conn.execute(documents.update().where(*key).values(**row)).rowcount == 0:
                conn.execute(documents.insert().values(**row))

    @staticmethod
    def indexed_row(collection: str, doc: DocSummary, pipeline_version: str, run_id: str = "") -> dict:
        return dict(collection=collection, doc_id=doc.doc_id, source_uri=doc.source_uri, fingerprint=doc.fingerprint,
                    content_hash=doc.content_hash, pipeline_version=pipeline_version, state=DocState.indexed.value,
                    reason="", detail="", stage="", chunks=doc.chunks, content_type=doc.content_type, title=doc.title,
                    attempts=0, next_attempt_at=0.0, run_id=run_id, modified_at=doc.modified)

    @staticmethod
    def failed_row(collection: str, failure: Failure, pipeline_version: str, chunks_kept: int = 0,
                   attempts: int = 0, next_attempt_at: float = 0.0, run_id: str = "") -> dict:
        """A failure leaves the previous version (its chunks, hash and title) as it is: only the failure changes."""
        state = DocState.quarantined if failure.stage == "quality" else DocState.failed
        return dict(collection=collection, doc_id=failure.doc_id, source_uri=failure.source_uri,
                    fingerprint=failure.fingerprint, pipeline_version=pipeline_version, state=state.value,
                    reason=failure.reason, detail=failure.detail[:2000], stage=failure.stage, chunks=chunks_kept,
                    attempts=attempts, next_attempt_at=next_attempt_at, run_id=run_id)

    def record_batch(self, collection: str, docs: list[DocSummary], failures: list[Failure],
                     pipeline_version: str) -> None:
        """Outcomes written straight to the documents table (tests and tools; runs commit through staging)."""
        with self.engine.begin() as conn:
            self.upsert_rows(conn, [self.indexed_row(collection, d, pipeline_version) for d in docs])
            self.upsert_rows(conn, [self.failed_row(collection, f, pipeline_version) for f in failures])

    def record_indexed(self, collection: str, doc: DocSummary, pipeline_version: str) -> None:
        self.record_batch(collection, [doc], [], pipeline_version)

    def record_failed(self, collection: str, failure: Failure, pipeline_version: str) -> None:
        self.record_batch(collection, [], [failure], pipeline_version)

    def record_deleted(self, collection: str, doc_ids: list[str], run_id: str = "") -> None:
        with self.engine.begin() as conn:
            for some in in_lists(doc_ids):
                conn.execute(documents.update().where(documents.c.collection == collection,
                                                      documents.c.doc_id.in_(some))
                             .values(state=DocState.deleted.value, chunks=0, reason="", detail="", attempts=0,
                                     next_attempt_at=0.0, run_id=run_id, updated_at=time.time()))

    def rows(self, collection: str, states: list[str] | None = None) -> list[dict]:
        q = select(documents).where(documents.c.collection == collection)
        if states:
            q = q.where(documents.c.state.in_(states))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(documents.c.source_uri))]

    def pages(self, table, *where, size: int = 2000) -> Iterator[list[dict]]:
        """Rows of `table` matching `where`, in pages by doc_id (keyset paging): memory stays flat however large."""
        after = ""
        while True:
            q = select(table).where(*where, table.c.doc_id > after).order_by(table.c.doc_id).limit(size)
            with self.engine.connect() as conn:
                page = [dict(r._mapping) for r in conn.execute(q)]
            if page:
                yield page
            if len(page) < size:
                return
            after = page[-1]["doc_id"]

    def iter_rows(self, collection: str) -> Iterator[dict]:
        for page in self.pages(documents, documents.c.collection == collection):
            yield from page

    def rows_for(self, collection: str, doc_ids: Iterable[str]) -> dict[str, dict]:
        ids, found = sorted(set(doc_ids)), {}
        with self.engine.connect() as conn:
            for some in in_lists(ids):
                q = select(documents).where(documents.c.collection == collection, documents.c.doc_id.in_(some))
                found.update({r.doc_id: dict(r._mapping) for r in conn.execute(q)})
        return found

    def counts(self, collection: str) -> dict[str, int]:
        q = (select(documents.c.state, func.count()).where(documents.c.collection == collection)
             .group_by(documents.c.state))
        with self.engine.connect() as conn:
            return {state: n for state, n in conn.execute(q)}

    def start_run(self, collection: str, run_id: str, source: str, scope: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(
                collection=collection, source=source, run_id=run_id, scope=json.dumps(scope), state="running",
                started_at=time.time(), finished_at=0.0, reconciled=0, milvus_count=0, ledger_count=0))

    def set_run_state(self, run_id: str, state: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(state=state))

    def run_state(self, run_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(runs.c.state).where(runs.c.run_id == run_id)).scalar()

    def record_run(self, collection: str, source: str, reconciliation: dict, summary: dict, run_id: str = "",
                   scope: dict | None = None) -> None:
        values = dict(collection=collection, source=source, finished_at=time.time(), state="done",
                      reconciled=int(reconciliation["ok"]), milvus_count=reconciliation["milvus_count"],
                      ledger_count=reconciliation["ledger_count"],
                      mismatched=json.dumps(reconciliation["mismatched_docs"]),
                      summary=json.dumps(summary, default=str), scope=json.dumps(scope or {}))
        with self.engine.begin() as conn:
            if not run_id or conn.execute(runs.update().where(runs.c.run_id == run_id).values(**values)).rowcount == 0:
                conn.execute(runs.insert().values(run_id=run_id, started_at=time.time(), **values))

    def last_run(self, collection: str) -> dict | None:
        runs_ = self.recent_runs(collection, 1)
        return runs_[0] if runs_ else None

    def recent_runs(self, collection: str, n: int = 10) -> list[dict]:
        """The last finished runs, newest first, each with its scope."""
        q = (select(runs).where(runs.c.collection == collection, runs.c.state == "done")
             .order_by(runs.c.id.desc()).limit(n))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        return [{"run_id": r["run_id"], "source": r["source"], "scope": json.loads(r["scope"] or "{}"),
                 "started_at": r["started_at"], "finished_at": r["finished_at"], "reconciled": bool(r["reconciled"]),
                 "milvus_count": r["milvus_count"], "ledger_count": r["ledger_count"],
                 "mismatched_docs": json.loads(r["mismatched"])} for r in rows]

    def index_version(self, collection: str) -> str:
        """Changes whenever a run of the collection starts or ends: what caches of its search results are keyed by."""
        q = select(runs.c.id, runs.c.state).where(runs.c.collection == collection).order_by(runs.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return f"{row.id}.{row.state}" if row else "0"

    def indexed_ids(self, collection: str, doc_ids: Iterable[str]) -> set[str]:
        """Which of these documents the collection serves now (indexed, or failed with an older version kept)."""
        ids = list(set(doc_ids))
        if not ids:
            return set()
        q = select(documents.c.doc_id).where(documents.c.collection == collection, documents.c.doc_id.in_(ids),
                                             documents.c.chunks > 0, documents.c.state != DocState.deleted.value)
        with self.engine.connect() as conn:
            return {r.doc_id for r in conn.execute(q)}

    def freshness(self, collection: str, recent: int = 500) -> dict[str, float]:
        """The last finished run's time, and upload-to-searchable percentiles of the recently indexed documents."""
        with self.engine.connect() as conn:
            last = conn.execute(select(func.max(runs.c.finished_at)).where(
                runs.c.collection == collection, runs.c.state == "done")).scalar()
            fresh = [r[0] for r in conn.execute(
                select(documents.c.fresh_s).where(documents.c.collection == collection, documents.c.fresh_s > 0,
                                                  documents.c.state == DocState.indexed.value)
                .order_by(documents.c.indexed_at.desc()).limit(recent))]
            indexed = conn.execute(select(func.count()).where(
                documents.c.collection == collection, documents.c.state == DocState.indexed.value)).scalar_one()
        out: dict[str, float] = {"indexed_documents": float(indexed)}
        if last:
            out["last_ingest_timestamp_seconds"] = float(last)
            out["index_age_seconds"] = max(0.0, time.time() - float(last))
        if fresh:
            fresh.sort()
            out["upload_to_searchable_p50_seconds"] = fresh[len(fresh) // 2]
            out["upload_to_searchable_p95_seconds"] = fresh[min(len(fresh) - 1, int(0.95 * len(fresh)))]
        return out

    def chunk_total(self, collection: str) -> int:
        """Chunks Milvus should hold: every document's served version, failed documents' previous ones included."""
        q = select(func.coalesce(func.sum(documents.c.chunks), 0)).where(
            documents.c.collection == collection, documents.c.state != DocState.deleted.value)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def delete_collection(self, collection: str) -> None:
        with self.engine.begin() as conn:
            for table in (documents, pending, leases):
                conn.execute(delete(table).where(table.c.collection == collection))


def _pg_insert():
    from sqlalchemy.dialects.postgresql import insert

    return insert


def shared_ledger(settings: Settings) -> Ledger:
    """This process's ledger for the configured URL (millrace.registry)."""
    url = settings.resolved_ledger_url
    return registry.shared(("ledger", url), lambda: Ledger(url))
