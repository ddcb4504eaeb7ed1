"""From S3 changes to Prefect events: the events of a flush, the POST to `{PREFECT_API_URL}/events` (the endpoint
`prefect.events.emit_event` ends at, without needing Prefect installed), and the debouncer that paces flushes.

The changes themselves travel through the durable change queue (millrace.events.queue), never through events. A
flush emits, per bucket, one `s3.object.created` / `s3.object.removed` event per object (the UI's event feed) and
one `millrace.changes.pending` event naming the collection: the wake-up a deployment trigger turns into a `drain`
run. A lost event loses nothing: the drain's schedule sweeps what is pending."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Awaitable, Callable, Sequence

import httpx

from millrace.events.s3 import S3Change, coalesce
from millrace.retry import with_retries

log = logging.getLogger("millrace.relay")
WAKE_EVENT = "millrace.changes.pending"
# Prefect refuses events over 1.5 MB (PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES); a flush of many objects is sent
# in several POSTs so that no request body grows with the flush.
MAX_POST_BYTES = 1_000_000


class EmitError(RuntimeError):
    """Prefect did not take the events; the message says what to check."""


def bucket_resource(bucket: str) -> dict[str, str]:
    return {"prefect.resource.id": f"s3.bucket.{bucket}", "prefect.resource.name": bucket}


def collection_resource(collection: str) -> dict[str, str]:
    return {"prefect.resource.id": f"millrace.collection.{collection}", "prefect.resource.name": collection}


def wake_event(collection: str, n: int, now: datetime | None = None, *, bucket: str | None = None) -> dict:
    """The event that starts (or is absorbed by) the collection's drain. A fresh id each time: two wake-ups are
    two wake-ups, unlike a redelivered object event."""
    now = now or datetime.now(timezone.utc)
    related = [{**bucket_resource(bucket), "prefect.resource.role": "bucket"}] if bucket else []
    return {"id": str(uuid.uuid4()), "occurred": now.isoformat(), "event": WAKE_EVENT,
            "resource": collection_resource(collection), "related": related,
            "payload": {"collection": collection, "changes": n}}


def object_events(bucket: str, changes: Sequence[S3Change], now: datetime | None = None) -> list[dict]:
    """One event per object of the bucket, its latest change. Ids are derived from the deliveries, so a redelivery
    gives the ids of the first delivery, which Prefect stores once."""
    now = now or datetime.now(timezone.utc)
    return [{
        "id": str(c.event_id),
        "occurred": (c.event_time or now).isoformat(),
        "event": f"s3.object.{c.kind}",
        "resource": bucket_resource(bucket),
        "related": [{"prefect.resource.id": f"s3.object.{bucket}/{c.key}", "prefect.resource.role": "object",
                     "prefect.resource.name": c.key}],
        "payload": {"bucket": bucket, "key": c.key, "size": c.size, "etag": c.etag, "sequencer": c.sequencer,
                    "event_time": c.event_time.isoformat() if c.event_time else None},
    } for c in coalesce(c for c in changes if c.bucket == bucket)]


def flush_events(collection: str, bucket: str, changes: Sequence[S3Change], now: datetime | None = None) -> list[dict]:
    """What one flush of a bucket emits: the wake-up first (it is the event that matters), then the object events."""
    objects = object_events(bucket, changes, now)
    return [wake_event(collection, len(objects), now, bucket=bucket), *objects]


def posts(events: list[dict], max_bytes: int | None = None) -> list[list[dict]]:
    """The events split into request bodies of about `max_bytes` at most (one event per body at least)."""
    limit = MAX_POST_BYTES if max_bytes is None else max_bytes
    bodies: list[list[dict]] = [[]]
    size = 0
    for event in events:
        cost = len(json.dumps(event)) + 2
        if bodies[-1] and size + cost > limit:
            bodies.append([])
            size = 0
        bodies[-1].append(event)
        size += cost
    return [b for b in bodies if b]


class PrefectEmitter:
    """POSTs events to a Prefect API, retried on transient failures (connection refused, 5xx, timeouts)."""

    def __init__(self, api_url: str, *, api_key: str = "", auth_string: str = "", timeout_s: float = 5.0,
                 retry_delays: Sequence[float] = (0.5, 1.5, 3.0)):
        self.api_url = api_url.rstrip("/")
        headers = {}
        if api_key:  # Prefect Cloud
            headers["Authorization"] = f"Bearer {api_key}"
        elif auth_string:  # a self-hosted server with PREFECT_SERVER_API_AUTH_STRING
            headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.retry_delays = list(retry_delays)

    def emit(self, events: list[dict]) -> None:
        for body in posts(events):
            def post(body: list[dict] = body) -> None:
                self.client.post(f"{self.api_url}/events", json=body).raise_for_status()

            try:
                with_retries(post, self.retry_delays, f"emitting {len(body)} events to {self.api_url}")
            except Exception as exc:
                raise EmitError(
                    f"could not emit events to the Prefect API at {self.api_url} ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); check that the Prefect server is up and that PREFECT_API_URL (or "
                    "MILLRACE_RELAY_PREFECT_API_URL) names it") from exc

    def close(self) -> None:
        self.client.close()


@dataclass
class _Bucket:
    changes: list[S3Change] = field(default_factory=list)
    first: float = 0.0  # when the oldest change not yet flushed arrived
    last: float = 0.0
    flushed: float = float("-inf")  # when the last flush started
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


class Debouncer:
    """Paces the flushes of each bucket without holding anyone up: `add` returns at once.

    The first change after a quiet period (no flush for `debounce_s`) is flushed at once, so a lone upload wakes
    its drain without delay. Changes that follow are gathered and flushed after `debounce_s` without new ones, or
    `max_wait_s` after the first of them, but never sooner than `debounce_s` after the previous flush: a burst
    costs a handful of flushes, not one per delivery. `max_keys` gathered changes flush without waiting. Flushes of
    one bucket run one at a time, in order; a failed flush is the flush function's to report, and its changes are
    not retried here (they are in the change queue)."""

    def __init__(self, flush: Callable[[str, list[S3Change]], Awaitable[object]], *, debounce_s: float = 1.0,
                 max_wait_s: float = 5.0, max_keys: int = 500):
        self.flush, self.debounce_s, self.max_wait_s, self.max_keys = flush, debounce_s, max_wait_s, max(1, max_keys)
        self._buckets: dict[str, _Bucket] = {}

    @property
    def pending(self) -> int:
        return sum(len(b.changes) for b in self._buckets.values())

    def add(self, changes: Sequence[S3Change]) -> None:
        now = asyncio.get_running_loop().time()
        for change in changes:
            b = self._buckets.setdefault(change.bucket, _Bucket())
            if not b.changes:
                b.first = now
            b.changes.append(change)
            b.last = now
            b.wake.set()
            if b.task is None:
                b.task = asyncio.create_task(self._run(change.bucket, b))

    def _due(self, b: _Bucket) -> float:
        if len(b.changes) >= self.max_keys:
            return float("-inf")
        if b.first - b.flushed >= self.debounce_s:  # the leading edge of a burst
            return b.first
        return max(min(b.last + self.debounce_s, b.first + self.max_wait_s), b.flushed + self.debounce_s)

    async def _run(self, bucket: str, b: _Bucket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while b.changes:
                remaining = self._due(b) - loop.time()
                if remaining > 0:
                    b.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(b.wake.wait(), remaining)
                    continue
                batch, b.changes = b.changes[:self.max_keys], b.changes[self.max_keys:]
                b.first, b.flushed = (loop.time() if b.changes else b.first), loop.time()
                try:
                    await self.flush(bucket, batch)
                except Exception:  # the flush function reports its own failures; the next flush still runs
                    log.debug("flush of bucket %s failed", bucket, exc_info=True)
        finally:
            b.task = None

    async def close(self) -> None:
        """Stop pacing; what was not flushed stays in the change queue for the drain's sweep."""
        tasks = [b.task for b in self._buckets.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
