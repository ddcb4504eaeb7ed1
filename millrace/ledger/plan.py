"""Planning a run without holding its listing: the listing goes into the ledger page by page, is classified there
(process, skip, wait for a retry), and comes back out a page at a time; deletions are found by a query.

A run over a million documents keeps a page of them in memory, not a million."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import unquote

from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select

from millrace.documents.records import TRANSIENT_REASONS, DocState, SourceObject
from millrace.ledger.book import Ledger, documents, listing
from millrace.sources.jsonl import SUFFIXES
from millrace.uris import relative_name, wanted

PAGE = 2000


class Scope(BaseModel):
    """What a run listed, and so all it may delete: a source, its filters and, optionally, named objects."""

    source: str  # canonical URI of the folder, file, record file or S3 prefix
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    objects: list[str] | None = None  # decoded paths relative to `source`; None: everything under it
    since: float | None = None  # only documents modified at or after this (epoch seconds) are processed

    @property
    def records(self) -> bool:
        return self.source.endswith(SUFFIXES)

    def relative(self, uri: str) -> str | None:
        if self.records:
            return unquote(uri.split("#", 1)[1]) if uri.startswith(self.source + "#") else None
        return relative_name(self.source, uri)

    def contains(self, uri: str) -> bool:
        rel = self.relative(uri)
        if rel is None:
            return False
        if not self.records and not wanted(rel, self.include, self.exclude):
            return False
        return self.objects is None or rel in self.objects

    def describe(self) -> str:
        parts = [self.source]
        parts += [f"include {p}" for p in self.include] + [f"exclude {p}" for p in self.exclude]
        if self.objects is not None:
            parts.append(f"{len(self.objects)} named object(s)")
        if self.since is not None:
            parts.append(f"modified since {_iso(self.since)}")
        return ", ".join(parts)


def _iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def record_listing(ledger: Ledger, run_id: str, objects: Iterable[SourceObject], scope: Scope) -> int:
    """Store what the source lists inside the scope, a page at a time; returns how many."""
    count, page = 0, []

    def flush() -> None:
        with ledger.engine.begin() as conn:
            conn.execute(listing.insert(), page)
        page.clear()

    for obj in objects:
        if scope.objects is not None and not scope.contains(obj.uri):
            continue
        page.append(dict(run_id=run_id, doc_id=obj.doc_id, uri=obj.uri, size=obj.size, fingerprint=obj.fingerprint,
                         media_type=obj.media_type, action="", modified=obj.modified))
        count += 1
        if len(page) >= PAGE:
            flush()
    if page:
        flush()
    return count


def _action(row: dict | None, obj: dict, version: str, retry_failed: bool, now: float) -> str:
    if row is None or row["state"] == DocState.deleted.value or row["fingerprint"] != obj["fingerprint"] \
            or row["pipeline_version"] != version or retry_failed and row["state"] != DocState.indexed.value:
        return "todo"
    if row["state"] == DocState.indexed.value or row["reason"] not in TRANSIENT_REASONS:
        return "skip"
    return "todo" if now >= row["next_attempt_at"] else "wait"


def _reuses(row: dict | None, model: str) -> bool:
    """The index holds chunks of this document embedded by `model`: its unchanged chunks keep their vectors."""
    return row is not None and row["chunks"] > 0 and row["pipeline_version"].split("|", 1)[0] == model


@dataclass
class Plan:
    """Counts of a classified listing; the documents themselves stay in the ledger until their page is read."""

    run_id: str
    todo: int = 0
    skipped: int = 0
    waiting: int = 0
    gone: int = 0
    reusable: set[str] = field(default_factory=set)  # of the page being read: vectors of this model exist
    # "reuse" is "todo" for a document whose stored vectors can be reused, decided with the ledger row at hand.

    @property
    def seen(self) -> int:
        return self.todo + self.skipped + self.waiting


def classify(ledger: Ledger, collection: str, run_id: str, version: str, retry_failed: bool = False,
             now: float | None = None, since: float | None = None) -> Plan:
    """Mark every listed document todo, skip or wait (a transient failure not yet due), page by page.

    Unchanged indexed documents are skipped; failed ones too, except transient failures whose next attempt is
    due, and every failure with `retry_failed`. With `since` (epoch seconds), documents last modified before it are
    skipped too (a backfill of recent changes); they stay listed, so deletions are still judged on the whole scope."""
    now = time.time() if now is None else now
    for page in ledger.pages(listing, listing.c.run_id == run_id, size=PAGE):
        known = ledger.rows_for(collection, [o["doc_id"] for o in page])
        by_action: dict[str, list[str]] = {}
        for obj in page:
            row = known.get(obj["doc_id"])
            action = _action(row, obj, version, retry_failed, now)
            if since is not None and 0 < (obj["modified"] or 0) < since:
                action = "skip"
            if action == "todo" and _reuses(row, version.split("|", 1)[0]):
                action = "reuse"
            by_action.setdefault(action, []).append(obj["doc_id"])
        with ledger.engine.begin() as conn:
            for action, ids in by_action.items():
                conn.execute(listing.update().where(listing.c.run_id == run_id, listing.c.doc_id.in_(ids))
                             .values(action=action))
    with ledger.engine.connect() as conn:
        counts = dict(conn.execute(select(listing.c.action, func.count()).where(listing.c.run_id == run_id)
                                   .group_by(listing.c.action)).all())
    return Plan(run_id=run_id, todo=counts.get("todo", 0) + counts.get("reuse", 0), skipped=counts.get("skip", 0),
                waiting=counts.get("wait", 0))


def todo_pages(ledger: Ledger, collection: str, plan: Plan) -> Iterator[list[SourceObject]]:
    """The documents to process, a page at a time; `plan.reusable` holds those of the current page whose stored
    vectors were made by this model."""
    for page in ledger.pages(listing, listing.c.run_id == plan.run_id, listing.c.action.in_(["todo", "reuse"]),
                             size=PAGE):
        plan.reusable = {o["doc_id"] for o in page if o["action"] == "reuse"}
        yield [SourceObject(uri=o["uri"], doc_id=o["doc_id"], size=o["size"], fingerprint=o["fingerprint"],
                            media_type=o["media_type"], modified=o["modified"] or 0.0) for o in page]


def gone_pages(ledger: Ledger, collection: str, run_id: str, scope: Scope) -> Iterator[list[dict]]:
    """Ledger rows of the scope that the listing no longer has: deleted at the source."""
    listed = select(listing.c.doc_id).where(listing.c.run_id == run_id)
    for page in ledger.pages(documents, documents.c.collection == collection,
                             documents.c.state != DocState.deleted.value, documents.c.doc_id.not_in(listed)):
        gone = [{"doc_id": r["doc_id"], "source_uri": r["source_uri"]} for r in page if scope.contains(r["source_uri"])]
        if gone:
            yield gone


def forget_listing(ledger: Ledger, run_id: str) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(delete(listing).where(listing.c.run_id == run_id))


@dataclass
class MaterializedPlan:
    """A whole plan in memory, for small listings and tests."""

    todo: list[SourceObject]
    skipped: list[SourceObject]
    waiting: list[SourceObject]
    gone: list[dict]
    reusable: set[str]

    @property
    def seen(self) -> int:
        return len(self.todo) + len(self.skipped) + len(self.waiting)


def plan_run(objects: list[SourceObject], scope: Scope | str, ledger: Ledger, collection: str, version: str,
             retry_failed: bool = False, now: float | None = None) -> MaterializedPlan:
    """Classify a listing held in memory (the streaming steps above, collected)."""
    import uuid

    scope = Scope(source=scope) if isinstance(scope, str) else scope
    run_id = f"plan-{uuid.uuid4().hex}"
    record_listing(ledger, run_id, objects, scope)
    try:
        classify(ledger, collection, run_id, version, retry_failed, now)
        with ledger.engine.connect() as conn:
            actions = dict(conn.execute(select(listing.c.doc_id, listing.c.action).where(
                listing.c.run_id == run_id)).all())
        plan = MaterializedPlan(todo=[], skipped=[], waiting=[], gone=[], reusable=set())
        for obj in objects:
            if obj.doc_id in actions:
                action = actions[obj.doc_id]
                {"todo": plan.todo, "reuse": plan.todo, "skip": plan.skipped, "wait": plan.waiting}[action].append(obj)
                if action == "reuse":
                    plan.reusable.add(obj.doc_id)
        plan.gone = [row for page in gone_pages(ledger, collection, run_id, scope) for row in page]
        return plan
    finally:
        forget_listing(ledger, run_id)
