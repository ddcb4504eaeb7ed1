"""Write as batches finish, commit when the run's verdict is known.

Each finished batch is *staged*: its new chunks go into Milvus at once, next to the old version's (nothing is
removed), and the ledger's `pending` table records, before that write, which ids the batch added, which old ids
it will retire and the documents rows it will commit. The flow then drops the batch from memory.

When every batch is in and the run-level quarantine limit holds, the run *commits* page by page: the old
versions' ids are deleted and the documents rows applied, one ledger transaction per page. A run over the limit
*rolls back*: the added ids are deleted and the pending rows dropped, so what is searchable is what it was. A run
killed at any point leaves pending rows that the next holder of the collection's lease finishes: rolled forward
when the dead run had begun committing, rolled back otherwise. Every step is idempotent, so a crash inside
recovery is recovered the same way."""

from __future__ import annotations

import json
import logging
import time
from typing import Iterator

from sqlalchemy import delete, select

from millrace.documents.records import TRANSIENT_REASONS, BatchResult, DocState
from millrace.index.store import MilvusStore
from millrace.ledger.book import Ledger, listing, pending, runs

log = logging.getLogger("millrace")


def backoff_s(attempts: int, base: float, cap: float) -> float:
    """Wait before the next automatic retry of a transient failure: none after the first, then base, 2 base, ..."""
    if attempts <= 1:
        return 0.0
    return min(cap, base * 2 ** (attempts - 2))


def stage_batch(store: MilvusStore, ledger: Ledger, collection: str, run_id: str, result: BatchResult,
                version: str, backoff: tuple[float, float] = (300.0, 21600.0)) -> int:
    """Record the batch's intent, then write its chunks; returns the number of chunks written."""
    doc_ids = {d.doc_id for d in result.documents} | {f.doc_id for f in result.failures}
    if not doc_ids:
        return 0
    existing = store.chunk_ids(doc_ids)
    known = ledger.rows_for(collection, doc_ids)
    new_ids: dict[str, set[str]] = {d: set() for d in doc_ids}
    for c in result.chunks:
        new_ids[c.doc_id].add(c.chunk_id)
    rows = []
    for doc in result.documents:
        old = existing.get(doc.doc_id, set())
        rows.append((doc.doc_id, Ledger.indexed_row(collection, doc, version, run_id),
                     new_ids[doc.doc_id] - old, old - new_ids[doc.doc_id]))
    now = time.time()
    for f in result.failures:
        # A failure removes nothing: the previous version, if any, stays searchable and counted.
        prev = known.get(f.doc_id)
        again = prev is not None and prev["state"] == "failed" and prev["reason"] in TRANSIENT_REASONS
        attempts = ((prev["attempts"] if again else 0) + 1) if f.transient else 0
        wait = backoff_s(attempts, *backoff) if f.transient else 0.0
        rows.append((f.doc_id, Ledger.failed_row(collection, f, version, len(existing.get(f.doc_id, ())), attempts,
                                                 now + wait if f.transient else 0.0, run_id), set(), set()))
    with ledger.engine.begin() as conn:
        conn.execute(delete(pending).where(pending.c.run_id == run_id, pending.c.doc_id.in_(sorted(doc_ids))))
        conn.execute(pending.insert(), [
            dict(run_id=run_id, doc_id=doc_id, collection=collection, row=json.dumps(row),
                 added=json.dumps(sorted(added)), stale=json.dumps(sorted(stale)))
            for doc_id, row, added, stale in rows])
    written = store.upsert(result.chunks, stored=set().union(*existing.values()) if existing else set())
    return written


def _pages(ledger: Ledger, run_id: str) -> Iterator[list[dict]]:
    return ledger.pages(pending, pending.c.run_id == run_id, size=500)


def commit(store: MilvusStore, ledger: Ledger, run_id: str) -> int:
    """Retire the old versions and apply the documents rows, page by page; returns the chunks removed."""
    ledger.set_run_state(run_id, "committing")
    removed = 0
    for page in _pages(ledger, run_id):
        stale = set().union(*(json.loads(p["stale"]) for p in page))
        removed += store.delete_ids(stale) if stale else 0
        with ledger.engine.begin() as conn:
            ledger.upsert_rows(conn, [_searchable(json.loads(p["row"])) for p in page])
            conn.execute(delete(pending).where(pending.c.run_id == run_id,
                                               pending.c.doc_id.in_([p["doc_id"] for p in page])))
    return removed


def _searchable(row: dict) -> dict:
    """Stamp an indexed row with the time it became searchable, and its upload-to-searchable seconds."""
    if row.get("state") != DocState.indexed.value:
        return row
    now = time.time()
    modified = row.get("modified_at") or 0.0
    return {**row, "indexed_at": now, "fresh_s": round(max(0.0, now - modified), 3) if modified else 0.0}


def rollback(store: MilvusStore, ledger: Ledger, run_id: str) -> int:
    """Remove what the run added and forget its pending outcomes; returns the chunks removed."""
    removed = 0
    for page in _pages(ledger, run_id):
        added = set().union(*(json.loads(p["added"]) for p in page))
        removed += store.delete_ids(added) if added else 0
        with ledger.engine.begin() as conn:
            conn.execute(delete(pending).where(pending.c.run_id == run_id,
                                               pending.c.doc_id.in_([p["doc_id"] for p in page])))
    return removed


def recover(store: MilvusStore, ledger: Ledger, collection: str, own_run_id: str) -> list[dict]:
    """Finish the pending writes of runs that died; call only while holding the collection's lease."""
    with ledger.engine.connect() as conn:
        dead = sorted(conn.execute(select(pending.c.run_id).where(
            pending.c.collection == collection, pending.c.run_id != own_run_id).distinct()).scalars())
    with ledger.engine.begin() as conn:  # runs that died before writing anything, and every dead run's listing
        others = select(runs.c.run_id).where(runs.c.collection == collection, runs.c.run_id != own_run_id)
        conn.execute(runs.update().where(runs.c.collection == collection, runs.c.run_id != own_run_id,
                                         runs.c.state.in_(["running", "committing"]), runs.c.run_id.not_in(dead))
                     .values(state="failed"))
        conn.execute(delete(listing).where(listing.c.run_id.in_(others)))
    done = []
    for run_id in dead:
        forward = ledger.run_state(run_id) == "committing"
        removed = commit(store, ledger, run_id) if forward else rollback(store, ledger, run_id)
        ledger.set_run_state(run_id, "failed")
        log.warning("recovered run %s on %s: %s (%d chunks removed)", run_id, collection,
                    "committed" if forward else "rolled back", removed)
        done.append({"run_id": run_id, "action": "committed" if forward else "rolled back", "chunks_removed": removed})
    return done
