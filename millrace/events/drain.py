"""What a draining run does with a round of queued changes, apart from indexing them (flows/drain.py does that with
the ingest flow's machinery): group them by source, find each one's ledger row, and settle the queue afterwards.

Settling is what makes a round safe to kill: entries leave the queue only after the round committed, and only the
versions the round took (millrace.events.queue). An object whose new version failed for a reason that can pass
(timeout, unreachable service, I/O, a worker process lost) stays queued until the ledger's backoff says to try
again, and after `drain_max_attempts` is set aside as dead with its reason; every other outcome (indexed, deleted,
unchanged, failed for good with a recorded reason, outside the filters) is final for the queue."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Iterable

from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from millrace.config import Settings
from millrace.documents.records import TRANSIENT_REASONS, doc_id_for
from millrace.events.queue import ChangeQueue, Entry
from millrace.ledger import lease
from millrace.ledger.book import Ledger
from millrace.uris import path_to_uri, s3_location, s3_uri, uri_to_path


# What a draining run's lease says it is for: the relay sends no wake-ups while a run holding it is alive.
LEASE_SOURCE = "drain of the change queue"


def draining(ledger: Ledger, collection: str) -> bool:
    """Whether a live draining run holds the collection: it takes whatever is queued, so a wake-up would only start
    a run that the deployment's CANCEL_NEW limit cancels (an in-process API app and a flow run per wake-up, ~1/s
    during a stream). A run that dies stops renewing, its lease expires, and wake-ups resume."""
    try:
        held = lease.current(ledger, collection)
    except SQLAlchemyError:  # cannot tell: a spare wake-up costs a cancelled run, a missing one the sweep's minute
        return False
    return held is not None and held["source"] == LEASE_SOURCE


class Settled(BaseModel):
    """How a round left the queue."""
    done: int = 0  # removed (a newer change that arrived meanwhile stays, so this may be below the round's size)
    retrying: int = 0  # transient failures, due again after the backoff
    dead: list[Entry] = []  # failed transiently drain_max_attempts times: set aside with their reason


def object_uri(source: str, obj: str) -> str:
    """The canonical URI of `obj` (a decoded path relative to `source`), as the ledger names the document."""
    if source.startswith("s3://"):
        bucket, prefix = s3_location(source)
        return s3_uri(bucket, f"{prefix.rstrip('/')}/{obj}" if prefix else obj)
    return path_to_uri(uri_to_path(source) / obj)


def by_source(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    """A round's entries per source, in a stable order: one ingest of named objects each."""
    grouped: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        grouped[entry.source].append(entry)
    return {source: grouped[source] for source in sorted(grouped)}


def settle(queue: ChangeQueue, ledger: Ledger, physical: str, entries: list[Entry], settings: Settings,
           now: float | None = None) -> Settled:
    """Settle a committed round's entries by what the ledger now says of each object (see the module docstring)."""
    now = time.time() if now is None else now
    ids = {doc_id_for(object_uri(e.source, e.object)): e for e in entries}
    rows = ledger.rows_for(physical, ids)
    settled, finished = Settled(), []
    for doc_id, entry in ids.items():
        row = rows.get(doc_id)
        if row is None or row["state"] not in ("failed", "quarantined") or row["reason"] not in TRANSIENT_REASONS:
            finished.append(entry)
            continue
        # Due again when the ledger's backoff ends, so the next attempt is a real one and not a "wait".
        due = max(row["next_attempt_at"], now)
        if queue.retry(entry, row["reason"], row["detail"], due, settings.drain_max_attempts):
            settled.dead.append(entry)
        else:
            settled.retrying += 1
    settled.done = queue.done(finished)
    return settled
