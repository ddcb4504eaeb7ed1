"""What the S3 event relay has seen, in the ledger database: delivered message ids (so a redelivery is answered
without emitting again) and the last event of each object (for `millrace status --doc`)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Iterable

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from millrace.config import Settings
from millrace.events.s3 import S3Change, coalesce, newer
from millrace.ledger.db import engine_for, in_lists

# Our own MetaData: these tables live in the ledger database but belong to the relay, not to the ledger's schema.
meta = MetaData()
relay_messages = Table(
    "relay_messages", meta,
    Column("message_id", String(255), primary_key=True),
    Column("received_at", Float, nullable=False, index=True),
)
s3_last_events = Table(
    "s3_last_events", meta,
    Column("bucket", String(255), primary_key=True),
    Column("key", String(1024), primary_key=True),
    Column("event", String(16), nullable=False),  # created | removed
    Column("event_name", String(64), nullable=False, default=""),
    Column("event_time", String(40), nullable=False, default=""),  # ISO 8601 as the producer stated it, or ""
    Column("etag", String(255), nullable=False, default=""),
    Column("size", Integer, nullable=True),
    Column("sequencer", String(64), nullable=False, default=""),
    Column("version_id", String(1024), nullable=False, default=""),
    Column("message_id", String(255), nullable=False, default=""),
    Column("batch_id", String(64), nullable=False, default=""),
    Column("received_at", Float, nullable=False),
)

# SNS gives up on a delivery long before this; ids older than it can no longer come back.
MESSAGE_RETENTION_S = 14 * 24 * 3600.0


def _as_change(row: dict) -> S3Change:
    return S3Change(bucket=row["bucket"], key=row["key"], kind=row["event"], sequencer=row["sequencer"],
                    event_time=datetime.fromisoformat(row["event_time"]) if row["event_time"] else None,
                    message_id=row["message_id"])


class EventLog:
    def __init__(self, url: str):
        self.engine = engine_for(url, meta)

    def seen(self, message_id: str) -> bool:
        return message_id in self.seen_many([message_id])

    def seen_many(self, message_ids: list[str]) -> set[str]:
        """Those of the ids already handled."""
        if not message_ids:
            return set()
        with self.engine.connect() as conn:
            q = select(relay_messages.c.message_id).where(relay_messages.c.message_id.in_(set(message_ids)))
            return {row.message_id for row in conn.execute(q)}

    def remember(self, message_ids: Iterable[str], now: float | None = None) -> None:
        """Mark deliveries as handled (call only once their events are emitted) and forget very old ones."""
        now = time.time() if now is None else now
        ids = sorted(set(message_ids))
        with self.engine.begin() as conn:
            known: set[str] = set()
            for some in in_lists(ids):
                q = select(relay_messages.c.message_id).where(relay_messages.c.message_id.in_(some))
                known |= {row.message_id for row in conn.execute(q)}
            if fresh := [{"message_id": m, "received_at": now} for m in ids if m not in known]:
                conn.execute(relay_messages.insert(), fresh)
            conn.execute(delete(relay_messages).where(relay_messages.c.received_at < now - MESSAGE_RETENTION_S))

    def record(self, changes: Iterable[S3Change], batch_id: str = "", now: float | None = None) -> None:
        """Store each object's latest event. A change older than the stored one (notifications arrive in any order)
        leaves the row as it is. The stored rows are read in one query per bucket and written in two statements."""
        now, changes = (time.time() if now is None else now), coalesce(changes)
        for attempt in range(2):  # another writer may insert the same key between our read and our insert
            try:
                with self.engine.begin() as conn:
                    self._upsert(conn, changes, batch_id, now)
                return
            except IntegrityError:
                if attempt:
                    raise

    @staticmethod
    def _upsert(conn, changes: list[S3Change], batch_id: str, now: float) -> None:
        stored: dict[tuple[str, str], S3Change] = {}
        for bucket in {c.bucket for c in changes}:
            keys = sorted({c.key for c in changes if c.bucket == bucket})
            for some in in_lists(keys):
                # FOR UPDATE on a server database: concurrent writers of one key compare against what the other wrote.
                q = select(s3_last_events).where(s3_last_events.c.bucket == bucket,
                                                 s3_last_events.c.key.in_(some)).with_for_update()
                stored |= {(bucket, row["key"]): _as_change(dict(row)) for row in conn.execute(q).mappings()}
        inserts, updates = [], []
        for change in changes:  # coalesced: one change per object
            at = (change.bucket, change.key)
            if at in stored and not newer(change, stored[at]):
                continue
            values = dict(event=change.kind, event_name=change.event_name[:64],
                          event_time=change.event_time.isoformat() if change.event_time else "", etag=change.etag,
                          size=change.size, sequencer=change.sequencer, version_id=change.version_id,
                          message_id=change.message_id, batch_id=batch_id, received_at=now)
            if at in stored:
                updates.append({**values, "at_bucket": change.bucket, "at_key": change.key})
            else:
                inserts.append({**values, "bucket": change.bucket, "key": change.key})
        if inserts:
            conn.execute(s3_last_events.insert(), inserts)
        if updates:
            conn.execute(s3_last_events.update().where(s3_last_events.c.bucket == bindparam("at_bucket"),
                                                       s3_last_events.c.key == bindparam("at_key")), updates)

    def last_event(self, bucket: str, key: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s3_last_events).where(s3_last_events.c.bucket == bucket,
                                                           s3_last_events.c.key == key)).mappings().first()
        return dict(row) if row is not None else None


def open_eventlog(settings: Settings | None = None) -> EventLog:
    return EventLog((settings or Settings()).resolved_ledger_url)


def last_event(settings: Settings, bucket: str, key: str) -> dict | None:
    """The last S3 event the relay emitted for an object (decoded key), or None: {bucket, key, event (created |
    removed), event_name, event_time, etag, size, sequencer, version_id, message_id, batch_id, received_at}."""
    return open_eventlog(settings).last_event(bucket, key)
