"""The durable change queue: every object change (from the relay, SQS, a watched folder) is written here before its
sender is acknowledged, and the collection's draining run (flows/drain.py) takes it from here.

One row per collection and object: the latest change wins (by S3 `sequencer` where there is one, else event time,
else arrival), so a flood of changes to one object is one entry. The drain does not trust the row's kind: it looks
the object up at the source when it processes it, so the order deliveries arrive in cannot make it wrong.

Each row carries a version that every accepted change bumps. `done()` removes only the versions a round took, so a
change that arrives while its object is being processed stays pending for the next round, and a crash (nothing
removed) leaves everything pending. An object whose processing keeps failing transiently is retried with the
ledger's backoff and, after `max_attempts`, set aside as `dead` with its reason (`millrace status` shows it).

It lives in the ledger's database (SQLite locally, any SQLAlchemy URL otherwise); only the collection's lease holder
takes from it, so no two rounds process one entry."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from typing import Collection, Iterable, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, bindparam, delete, func, select

from millrace import registry
from millrace.config import Settings
from millrace.events.s3 import S3Change, newer
from millrace.ledger.db import engine_for, in_lists
from millrace.sources.base import route_keys

meta = MetaData()
changes = Table(
    "change_queue", meta,
    Column("collection", String(255), primary_key=True),
    Column("key", String(64), primary_key=True),  # sha256 of source + object: both may be long
    Column("source", Text, nullable=False),  # canonical source URI (millrace.uris.canonical_source_uri)
    Column("object", Text, nullable=False),  # decoded path relative to the source
    Column("kind", String(16), nullable=False),  # created | removed, as last reported
    Column("sequencer", String(64), nullable=False, default=""),
    Column("event_time", Float, nullable=False, default=0.0),
    Column("size", Integer, nullable=True),
    Column("origin", String(255), nullable=False, default=""),  # relay:<message id> | sqs:<message id> | watch | ...
    Column("version", Integer, nullable=False, default=1),
    # When the oldest change not yet searchable arrived: the age of the oldest entry is the freshness SLO signal.
    Column("enqueued_at", Float, nullable=False, index=True),
    Column("updated_at", Float, nullable=False),
    Column("state", String(8), nullable=False, default="pending"),  # pending | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("reason", String(64), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
)
rounds = Table(
    "drain_rounds", meta,  # one row per drained round, for the throughput and round metrics
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("collection", String(255), nullable=False, index=True),
    Column("run_id", String(64), nullable=False),
    Column("changes", Integer, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("finished_at", Float, nullable=False, index=True),
)
ROUND_RETENTION_S = 7 * 24 * 3600.0
# What an accepted change may rewrite in a stored row (the key, source and object name the row).
_UPDATED = ("kind", "sequencer", "event_time", "size", "origin", "updated_at", "version", "enqueued_at", "state",
            "attempts", "next_attempt_at", "reason", "detail")


class Change(BaseModel):
    """One object changed, addressed the way the ingest flow addresses it: a source and a path below it."""
    model_config = ConfigDict(frozen=True)

    collection: str
    source: str
    object: str
    kind: Literal["created", "removed"] = "created"
    sequencer: str = ""
    event_time: datetime | None = None
    size: int | None = None
    origin: str = ""


class Entry(Change):
    """A pending change as `take()` returns it; `version` is what `done()` matches."""
    version: int
    enqueued_at: float
    attempts: int = 0
    state: str = "pending"
    reason: str = ""
    detail: str = ""


class QueueStats(BaseModel):
    collection: str
    pending: int
    due: int  # pending and not waiting for a retry
    dead: int
    oldest_enqueued_at: float | None
    oldest_age_s: float
    watermark: float  # changes that arrived before this are searchable (or failed with a recorded reason)


def entry_key(source: str, obj: str) -> str:
    return hashlib.sha256(f"{source}\0{obj}".encode()).hexdigest()[:64]


def _epoch(when: datetime | None) -> float:
    if when is None:
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _newer(change: Change, row: dict) -> bool:
    """Whether `change` supersedes the stored row (millrace.events.s3.newer: sequencer, then event time, then
    arrival). A redelivery of the same change (same sequencer) is not newer."""
    width = max(len(change.sequencer), len(row["sequencer"]))
    if change.sequencer and row["sequencer"] and \
            change.sequencer.upper().ljust(width, "0") == row["sequencer"].upper().ljust(width, "0"):
        return False

    def s3(sequencer: str, event_time: float) -> S3Change:
        return S3Change(bucket="-", key="-", kind="created", sequencer=sequencer, message_id="-",
                        event_time=datetime.fromtimestamp(event_time, timezone.utc) if event_time else None)

    return newer(s3(change.sequencer, _epoch(change.event_time)), s3(row["sequencer"], row["event_time"]))


def _entry(row) -> Entry:
    r = dict(row._mapping)
    return Entry(collection=r["collection"], source=r["source"], object=r["object"], kind=r["kind"],
                 sequencer=r["sequencer"], size=r["size"], origin=r["origin"], version=r["version"],
                 event_time=datetime.fromtimestamp(r["event_time"], timezone.utc) if r["event_time"] else None,
                 enqueued_at=r["enqueued_at"], attempts=r["attempts"], state=r["state"], reason=r["reason"],
                 detail=r["detail"])


class ChangeQueue:
    def __init__(self, url: str):
        self.engine = engine_for(url, meta)

    def put(self, batch: Iterable[Change], now: float | None = None) -> int:
        """Store changes durably (one transaction); returns how many superseded what was stored. A change older
        than the stored one is dropped; a change to a dead entry revives it. The stored rows are read in one query
        and written in two statements whatever the batch's size: the relay writes the deliveries that arrive
        together as one batch, and building two statements per change was its largest cost."""
        now = time.time() if now is None else now
        batch = list(batch)
        accepted = 0
        with self.engine.begin() as conn:
            rows = self._stored(conn, {(c.collection, entry_key(c.source, c.object)) for c in batch})
            stored, touched = set(rows), set()
            for change in batch:  # in order: a later change of the same object in the batch meets the earlier one
                at = (change.collection, entry_key(change.source, change.object))
                values = dict(kind=change.kind, sequencer=change.sequencer[:64], event_time=_epoch(change.event_time),
                              size=change.size, origin=change.origin[:255], updated_at=now)
                row = rows.get(at)
                if row is None:
                    rows[at] = dict(collection=change.collection, key=at[1], source=change.source,
                                    object=change.object, version=1, enqueued_at=now, state="pending", attempts=0,
                                    next_attempt_at=0.0, reason="", detail="", **values)
                elif row["state"] == "dead" or _newer(change, row):
                    if row["state"] == "dead":
                        row.update(enqueued_at=now, attempts=0, next_attempt_at=0.0, reason="", detail="")
                    row.update(version=row["version"] + 1, state="pending", **values)
                else:
                    continue
                touched.add(at)
                accepted += 1
            if inserts := [rows[at] for at in touched - stored]:
                conn.execute(changes.insert(), inserts)
            if updates := [{**{c: rows[at][c] for c in _UPDATED}, "at_collection": at[0], "at_key": at[1]}
                           for at in touched & stored]:
                conn.execute(changes.update().where(changes.c.collection == bindparam("at_collection"),
                                                    changes.c.key == bindparam("at_key")), updates)
        return accepted

    @staticmethod
    def _stored(conn, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """The stored rows of (collection, key) pairs, locked for this transaction on a server database."""
        found: dict[tuple[str, str], dict] = {}
        for collection in {c for c, _ in keys}:
            for some in in_lists(sorted(k for c, k in keys if c == collection)):
                q = select(changes).where(changes.c.collection == collection, changes.c.key.in_(some))
                for row in conn.execute(q.with_for_update()).mappings():
                    found[(collection, row["key"])] = dict(row)
        return found

    def take(self, collection: str, max_changes: int = 1000, max_bytes: int | None = None,
             now: float | None = None, exclude: Collection[str] = ()) -> list[Entry]:
        """The oldest due entries of a collection, at most `max_changes` and (where sizes are known) about
        `max_bytes`: a round stays bounded however long the queue is. At least one entry if any is due. Keys in
        `exclude` (entry_key) are passed over: those of a round still committing, which settles them itself."""
        now = time.time() if now is None else now
        q = (select(changes).where(changes.c.collection == collection, changes.c.state == "pending",
                                   changes.c.next_attempt_at <= now)
             .order_by(changes.c.enqueued_at, changes.c.key).limit(max_changes + len(exclude)))
        taken, size = [], 0
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                if row.key in exclude:
                    continue
                if len(taken) >= max_changes:
                    break
                entry = _entry(row)
                size += entry.size or 0
                if taken and max_bytes is not None and size > max_bytes:
                    break
                taken.append(entry)
        return taken

    def done(self, entries: Iterable[Entry]) -> int:
        """Remove the entries a round committed, unless a newer change arrived for them meanwhile."""
        removed = 0
        with self.engine.begin() as conn:
            for e in entries:
                removed += conn.execute(delete(changes).where(
                    changes.c.collection == e.collection, changes.c.key == entry_key(e.source, e.object),
                    changes.c.version == e.version)).rowcount
        return removed

    def retry(self, entry: Entry, reason: str, detail: str, next_attempt_at: float, max_attempts: int) -> bool:
        """An entry whose object failed transiently: due again at `next_attempt_at`, or dead after `max_attempts`.
        True when it died. A newer change that arrived meanwhile keeps its own fresh attempt count."""
        where = (changes.c.collection == entry.collection, changes.c.key == entry_key(entry.source, entry.object),
                 changes.c.version == entry.version)
        dead = entry.attempts + 1 >= max_attempts
        with self.engine.begin() as conn:
            hit = conn.execute(changes.update().where(*where).values(
                attempts=entry.attempts + 1, next_attempt_at=next_attempt_at, reason=reason[:64], detail=detail[:2000],
                state="dead" if dead else "pending")).rowcount
        return dead and hit == 1

    def stats(self, collection: str, now: float | None = None) -> QueueStats:
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            pending = select(func.count(), func.min(changes.c.enqueued_at)).where(
                changes.c.collection == collection, changes.c.state == "pending")
            count, oldest = conn.execute(pending).one()
            due = conn.execute(select(func.count()).where(
                changes.c.collection == collection, changes.c.state == "pending",
                changes.c.next_attempt_at <= now)).scalar_one()
            dead = conn.execute(select(func.count()).where(
                changes.c.collection == collection, changes.c.state == "dead")).scalar_one()
        return QueueStats(collection=collection, pending=count, due=due, dead=dead, oldest_enqueued_at=oldest,
                          oldest_age_s=max(0.0, now - oldest) if oldest is not None else 0.0,
                          watermark=oldest if oldest is not None else now)

    def collections(self) -> list[str]:
        """The collections with pending entries (what the sweep wakes)."""
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(changes.c.collection).where(changes.c.state == "pending").distinct())
                          .scalars())

    def entries(self, collection: str, state: str = "dead", limit: int = 100) -> list[Entry]:
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(
                select(changes).where(changes.c.collection == collection, changes.c.state == state)
                .order_by(changes.c.enqueued_at).limit(limit))]

    def entry(self, collection: str, source: str, obj: str) -> Entry | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(changes).where(changes.c.collection == collection,
                                                     changes.c.key == entry_key(source, obj))).first()
        return _entry(row) if row is not None else None

    def record_round(self, collection: str, run_id: str, n: int, seconds: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            conn.execute(rounds.insert().values(collection=collection, run_id=run_id, changes=n, seconds=seconds,
                                                finished_at=now))
            conn.execute(delete(rounds).where(rounds.c.finished_at < now - ROUND_RETENTION_S))

    def round_totals(self, collection: str) -> dict[str, float]:
        """Rounds and changes drained (kept a week), and the last round's size and duration."""
        with self.engine.connect() as conn:
            n, total, secs = conn.execute(select(func.count(), func.coalesce(func.sum(rounds.c.changes), 0),
                                                 func.coalesce(func.sum(rounds.c.seconds), 0.0))
                                          .where(rounds.c.collection == collection)).one()
            last = conn.execute(select(rounds).where(rounds.c.collection == collection)
                                .order_by(rounds.c.id.desc()).limit(1)).first()
        return {"rounds": n, "changes": total, "seconds": float(secs),
                "last_changes": last.changes if last else 0, "last_seconds": last.seconds if last else 0.0,
                "last_finished_at": last.finished_at if last else 0.0}


def from_s3(collection: str, notices: Iterable[S3Change], sources: list[str], via: str) -> list[Change]:
    """Queue records for S3 object changes, each addressed by the configured source that holds its key
    (millrace.sources.base.route_keys: the deepest wins); keys outside every configured source are left out. `via`
    names the carrier in the origin (relay, sqs) next to the delivery's message id."""
    queued = []
    for c in notices:
        if c.key.endswith("/"):  # a console "folder" marker: no document (S3Source skips them when listing)
            continue
        origin = c.message_id if c.message_id.startswith(f"{via}:") else f"{via}:{c.message_id}"
        for source, (rel, *_) in route_keys(c.bucket, [c.key], sources).items():
            queued.append(Change(collection=collection, source=source, object=rel, kind=c.kind, sequencer=c.sequencer,
                                 event_time=c.event_time, size=c.size, origin=origin))
    return queued


def shared_queue(settings: Settings) -> ChangeQueue:
    """This process's change queue, in the ledger's database (millrace.registry)."""
    url = settings.resolved_ledger_url
    return registry.shared(("queue", url), lambda: ChangeQueue(url))
