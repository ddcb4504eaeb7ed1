"""The relay killed (SIGKILL) around the moment it acknowledges a delivery: a change is either in the change queue
with the sender told so, or the sender was told nothing and delivers the same SNS message again to the restarted
relay; either way the queue ends with each object once and the latest change wins.

"queue-blocked": another writer holds the ledger database's write lock, so the relay is killed while it waits to
record the delivery, before answering. "emit-hung": the Prefect API sits behind a TCP fault proxy that accepts the relay's emit and
never answers; the relay has answered 200 already, and its death loses only the wake-up (the drain's schedule sweeps
the queue)."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from millrace.config import Settings
from tests.faultproxy import FaultProxy, wait_until
from tests.intake.relay_harness import collection_of, envelope_of, post, queue, start_relay, stop

pytestmark = pytest.mark.integration
KEYS = ["in box/café #1.txt", "a+b = c 100%.md", "Übersicht Mai (v2).pdf"]


@pytest.mark.parametrize("fault", ["queue-blocked", "emit-hung"])
def test_a_relay_killed_around_its_answer_loses_and_duplicates_nothing(prefect_api, tmp_path, fault):
    api = urlsplit(prefect_api)
    bucket = f"killed-{fault}-{uuid.uuid4().hex[:6]}"
    envelope = envelope_of(*KEYS, bucket=bucket)
    home = tmp_path / "relay-home"
    collection = f"killed_{uuid.uuid4().hex[:8]}"
    with FaultProxy((api.hostname, api.port)) as proxy:
        if fault == "emit-hung":
            proxy.set_mode("hold")
        # Long emit timeouts: the POST is surely still in flight when the relay dies.
        relay, proc = start_relay(home, f"{proxy.url}{api.path}", MILLRACE_RELAY_EMIT_TIMEOUT_S="60",
                                  MILLRACE_COLLECTION=collection)
        lock = None
        if fault == "queue-blocked":  # a writer that holds the ledger's write lock longer than the relay lives
            lock = sqlite3.connect(Settings(home=home).resolved_ledger_url.removeprefix("sqlite:///"),
                                   isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
        answers: list = []
        sender = threading.Thread(target=lambda: answers.append(_post_or_error(relay, envelope)), daemon=True)
        try:
            sender.start()
            if fault == "emit-hung":  # answered, and now emitting: its POST to /events reached the proxy
                wait_until(lambda: proxy.accepted >= 1, "the relay's emit to reach the proxy", timeout=30, every=0.05)
                sender.join(30)
                assert answers and answers[0].status_code == 200 and answers[0].json()["status"] == "queued"
            else:
                time.sleep(2)  # the relay is waiting for the lock inside its queue write
                assert sender.is_alive(), answers
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            sender.join(30)
        finally:
            stop(proc)
            if lock is not None:
                lock.close()  # rolls back: the writer wrote nothing
        assert not sender.is_alive()
        changes = queue(home)
        if fault == "queue-blocked":
            assert isinstance(answers[0], httpx.TransportError), answers  # no 200: the sender delivers again
            assert changes.stats(collection).pending == 0
        else:
            assert changes.stats(collection).pending == len(KEYS)  # durable: the kill lost none of it

        proxy.set_mode("pass")
        relay, proc = start_relay(home, f"{proxy.url}{api.path}", MILLRACE_COLLECTION=collection)
        try:
            assert collection_of(relay) == collection
            again = post(relay, envelope)  # SNS's redelivery (or a late copy of a delivery already answered)
            expected = "queued" if fault == "queue-blocked" else "duplicate"
            assert again.status_code == 200 and again.json()["status"] == expected, again.text
            third = post(relay, envelope)
            assert third.status_code == 200 and third.json()["status"] == "duplicate"
        finally:
            stop(proc)
    stats = changes.stats(collection)
    assert stats.pending == len(KEYS) and stats.dead == 0
    for key in KEYS:
        entry = changes.entry(collection, f"s3://{bucket}", key)
        assert entry is not None and entry.kind == "created" and entry.version == 1, key


def _post_or_error(relay: str, envelope: dict):
    try:
        return post(relay, envelope)
    except httpx.TransportError as exc:
        return exc
