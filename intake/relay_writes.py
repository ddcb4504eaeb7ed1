"""The relay's writes: each delivery's changes go into the change queue once, however often it arrives, and the
deliveries that arrive while a group is being written are written together, in one transaction per table (a burst of
single-object notifications, SNS's way, would otherwise pay a commit or three each)."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from millrace.events.log import EventLog
from millrace.events.queue import Change, ChangeQueue
from millrace.events.s3 import S3Change

log = logging.getLogger("millrace.relay")

Routed = list[tuple[S3Change, Change]]
Outcome = tuple[int, dict]


class DeliveryWriter:
    """`await deliver(message_id, routed)` -> (HTTP code, body, whether this request was the first copy)."""

    def __init__(self, queue: ChangeQueue, eventlog: EventLog, on_queued: Callable[[list[S3Change]], None]):
        self.queue, self.eventlog, self.on_queued = queue, eventlog, on_queued
        self.in_flight: dict[str, asyncio.Future] = {}
        self.pending: list[tuple[str, Routed, asyncio.Future]] = []
        self.writer: asyncio.Future | None = None

    async def deliver(self, message_id: str, routed: Routed) -> tuple[int, dict, bool]:
        """A copy that arrives while the first is still being written waits for the same outcome."""
        task = self.in_flight.get(message_id)
        first = task is None
        if task is None:
            task = self.in_flight[message_id] = asyncio.ensure_future(self._queue(message_id, routed))
            task.add_done_callback(lambda t: self.in_flight.get(message_id) is t and self.in_flight.pop(message_id))
        # Shielded: a sender that hangs up does not cancel the write that other requests wait for.
        code, body = await asyncio.shield(task)
        return code, body, first

    async def _queue(self, message_id: str, routed: Routed) -> Outcome:
        done = asyncio.get_running_loop().create_future()
        self.pending.append((message_id, routed, done))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.ensure_future(self._write_groups())
        return await done

    async def _write_groups(self) -> None:
        while self.pending:
            group, self.pending = self.pending, []
            try:
                outcomes = await asyncio.to_thread(self.write, [(m, r) for m, r, _ in group])
            except Exception as exc:  # write() answers for each delivery: a bug here must not hang the senders
                outcomes = [(503, {"detail": f"the relay could not queue the delivery: {exc}"})] * len(group)
            for (_, routed, done), (code, body) in zip(group, outcomes):
                if code == 200 and body["status"] == "queued":
                    self.on_queued([c for c, _ in routed])
                if not done.done():
                    done.set_result((code, body))

    def write(self, group: list[tuple[str, Routed]]) -> list[Outcome]:
        """One group of deliveries (distinct message ids): queued, or all refused with 503 so that senders retry."""
        try:
            seen = self.eventlog.seen_many([m for m, _ in group])
        except Exception as exc:
            return [(503, {"detail": f"the relay's event log (the ledger database) is unavailable: {exc}"})] * len(group)
        fresh = [(m, routed) for m, routed in group if m not in seen]
        duplicate = {"status": "duplicate"}
        try:
            self.queue.put([q for _, routed in fresh for _, q in routed])
        except Exception as exc:
            failed = (503, {"detail": f"the change queue (the ledger database) cannot be written "
                                      f"({type(exc).__name__}: {str(exc)[:200]}); nothing was acknowledged: the "
                                      "sender delivers again later"})
            return [(200, {**duplicate, "message_id": m}) if m in seen else failed for m, _ in group]
        # The changes are queued: a redelivery after a failure below re-queues the same changes, harmlessly.
        ids = [m for m, _ in fresh]
        try:
            self.eventlog.remember(ids)
        except Exception as exc:
            log.warning("could not record deliveries %s as handled: %s", ids[:5], exc)
        try:
            self.eventlog.record([c for _, routed in fresh for c, _ in routed])
        except Exception as exc:
            log.warning("could not record the last events of deliveries %s: %s", ids[:5], exc)
        return [(200, {**duplicate, "message_id": m}) if m in seen else
                (200, {"status": "queued", "message_id": m, "changes": len(routed)}) for m, routed in group]
