"""From S3 changes to Prefect events: debounced batches per bucket, the events of a batch, and the POST to
`{PREFECT_API_URL}/events` (the endpoint `prefect.events.emit_event` ends at, without needing Prefect installed).

Per batch: one `s3.object.created` / `s3.object.removed` event per object, what operators see in the event feed, and
one `s3.objects.changed` event carrying the whole batch, because a deployment trigger templates its parameters from
its own triggering event only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Awaitable, Callable, Sequence

import httpx

from millrace.retry import with_retries
from millrace.s3events import EVENT_NAMESPACE, S3Change, coalesce

BATCH_EVENT = "s3.objects.changed"
# Prefect refuses events over 1.5 MB (PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES): a batch whose key list would come
# near it is split into several batch events.
MAX_BATCH_KEY_BYTES = 1_000_000


class EmitError(RuntimeError):
    """Prefect did not take the events; the message says what to do."""


def bucket_resource(bucket: str) -> dict[str, str]:
    return {"prefect.resource.id": f"s3.bucket.{bucket}", "prefect.resource.name": bucket}


def _parts(changes: list[S3Change]) -> list[list[S3Change]]:
    parts: list[list[S3Change]] = [[]]
    size = 0
    for change in changes:
        cost = len(json.dumps(change.key)) + 2
        if parts[-1] and size + cost > MAX_BATCH_KEY_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(change)
        size += cost
    return parts


@dataclass
class Batch:
    batch_id: str
    changes: list[S3Change]
    events: list[dict]


def build_batches(bucket: str, changes: Sequence[S3Change], now: datetime | None = None) -> list[Batch]:
    """The Prefect events of one flush: the latest change per key, its object event, and the batch event. Ids are
    derived from the deliveries, so the same deliveries give the same events."""
    now = now or datetime.now(timezone.utc)
    batches = []
    for part in _parts(coalesce(c for c in changes if c.bucket == bucket)):
        if not part:
            continue
        batch_id = uuid.uuid5(EVENT_NAMESPACE, "batch:" + ",".join(sorted(str(c.event_id) for c in part)))
        events = [{
            "id": str(c.event_id),
            "occurred": (c.event_time or now).isoformat(),
            "event": f"s3.object.{c.kind}",
            "resource": bucket_resource(bucket),
            "related": [{"prefect.resource.id": f"s3.object.{bucket}/{c.key}", "prefect.resource.role": "object",
                         "prefect.resource.name": c.key}],
            "payload": {"bucket": bucket, "key": c.key, "size": c.size, "etag": c.etag, "sequencer": c.sequencer,
                        "event_time": c.event_time.isoformat() if c.event_time else None,
                        "batch_id": str(batch_id)},
        } for c in part]
        events.append({
            "id": str(batch_id),
            "occurred": now.isoformat(),
            "event": BATCH_EVENT,
            "resource": bucket_resource(bucket),
            "related": [],
            "payload": {"bucket": bucket, "created": [c.key for c in part if c.kind == "created"],
                        "removed": [c.key for c in part if c.kind == "removed"], "batch_id": str(batch_id),
                        "count": len(part)},
        })
        batches.append(Batch(str(batch_id), part, events))
    return batches


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
        def post() -> None:
            self.client.post(f"{self.api_url}/events", json=events).raise_for_status()

        try:
            with_retries(post, self.retry_delays, f"emitting {len(events)} events to {self.api_url}")
        except Exception as exc:
            raise EmitError(
                f"could not emit events to the Prefect API at {self.api_url} ({type(exc).__name__}: "
                f"{str(exc)[:200]}); check that the Prefect server is up and that PREFECT_API_URL (or "
                "MILLRACE_RELAY_PREFECT_API_URL) names it. Nothing was acknowledged: the sender delivers again "
                "later") from exc

    def close(self) -> None:
        self.client.close()


@dataclass
class _Open:
    first: float
    last: float
    changes: list[S3Change] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    full: bool = False


class Debouncer:
    """Gathers changes per bucket and flushes a bucket after `debounce_s` without new changes, `max_wait_s` after its
    first change, or at `max_keys` changes. `submit` returns once the flush holding its changes has succeeded (what
    `flush` returned, per batch) and raises what the flush raised: nothing is acknowledged before it is emitted.
    Flushes of one bucket run one at a time, in order."""

    def __init__(self, flush: Callable[[str, list[S3Change]], Awaitable[object]], *, debounce_s: float = 1.0,
                 max_wait_s: float = 5.0, max_keys: int = 500):
        self.flush, self.debounce_s, self.max_wait_s, self.max_keys = flush, debounce_s, max_wait_s, max(1, max_keys)
        self._open: dict[str, _Open] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()

    @property
    def pending(self) -> int:
        return sum(len(b.changes) for b in self._open.values())

    async def submit(self, changes: Sequence[S3Change]) -> list:
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future] = []
        for change in changes:
            batch = self._open.get(change.bucket)
            if batch is None:
                batch = self._open[change.bucket] = _Open(first=loop.time(), last=loop.time())
                # A flush nobody awaits any more (its requests were cancelled) must not log "never retrieved".
                batch.done.add_done_callback(lambda f: f.cancelled() or f.exception())
                task = asyncio.create_task(self._run(change.bucket, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            batch.changes.append(change)
            batch.last = loop.time()
            if len(batch.changes) >= self.max_keys:
                batch.full = True
                del self._open[change.bucket]
            batch.wake.set()
            if not waits or waits[-1] is not batch.done:
                waits.append(batch.done)
        return list(await asyncio.gather(*dict.fromkeys(waits)))

    async def _run(self, bucket: str, batch: _Open) -> None:
        loop = asyncio.get_running_loop()
        while not batch.full:
            remaining = min(batch.last + self.debounce_s, batch.first + self.max_wait_s) - loop.time()
            if remaining <= 0:
                break
            batch.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.wake.wait(), remaining)
        if self._open.get(bucket) is batch:
            del self._open[bucket]
        async with self._locks.setdefault(bucket, asyncio.Lock()):
            try:
                result = await self.flush(bucket, batch.changes)
            except asyncio.CancelledError:  # shutting down: the waiting requests fail, so nothing is acknowledged
                batch.done.cancel()
                raise
            except Exception as exc:
                batch.done.set_exception(exc)
            else:
                batch.done.set_result(result)
