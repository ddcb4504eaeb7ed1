"""The S3 event relay end to end: moto S3 -> bucket notification -> SNS topic -> HTTP subscription -> the relay in
its own process -> the change queue in the ledger database (before the 200) and the real Prefect API (object events
and the wake-up of the collection's drain, after it)."""


from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, quote_plus

import httpx
import pytest

from millrace.config import Settings
from millrace.events.log import last_event
from tests.intake.relay_harness import (KEYS, Capture, collection_of, envelope_of, events, names, post, queue,
                                         start_relay, stop, wait_for, wakes, world)

pytestmark = pytest.mark.integration


def test_uploads_and_a_delete_are_queued_and_become_object_events_and_few_wake_ups(world):
    s3, bucket, api, collection = world["s3"], world["bucket"], world["api"], world["collection"]
    with ThreadPoolExecutor(len(KEYS)) as pool:  # a burst: SNS delivers these concurrently
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), KEYS))
    found = wait_for(lambda: (e := events(api, bucket)) and len(names(e, "s3.object.created")) >= 3 and e,
                     "three s3.object.created events")
    created = names(found, "s3.object.created")
    assert sorted(e["payload"]["key"] for e in created) == sorted(KEYS)  # decoded: spaces, umlauts, + and %
    for e in created:
        key = e["payload"]["key"]
        assert e["related"][0]["prefect.resource.id"] == f"s3.object.{bucket}/{key}"
        assert e["related"][0]["prefect.resource.role"] == "object"
        assert e["payload"]["size"] == len(key.encode()) and e["payload"]["etag"]
    changes = queue(world["home"])
    for key in KEYS:  # no MILLRACE_SOURCES: the bucket is the source, the decoded key the object
        entry = changes.entry(collection, f"s3://{bucket}", key)
        assert entry is not None and entry.kind == "created" and entry.size == len(key.encode()), key
        assert entry.origin.startswith("relay:")
    woken = wait_for(lambda: wakes(api, collection), "a wake-up event")
    assert woken[0]["payload"]["collection"] == collection and woken[0]["payload"]["changes"] >= 1
    assert woken[0]["resource"]["prefect.resource.name"] == collection
    assert woken[0]["related"][0]["prefect.resource.id"] == f"s3.bucket.{bucket}"
    time.sleep(6)  # the event persister flushes every few seconds: count after it settled
    woken = wakes(api, collection)
    assert 1 <= len(woken) < len(KEYS) + 1 and sum(w["payload"]["changes"] for w in woken) >= len(KEYS)
    settings = Settings(home=world["home"])
    assert last_event(settings, bucket, KEYS[1])["event"] == "created"

    s3.delete_object(Bucket=bucket, Key=KEYS[0])
    removed = wait_for(lambda: names(events(api, bucket), "s3.object.removed"), "an s3.object.removed event")
    assert [e["payload"]["key"] for e in removed] == [KEYS[0]]
    assert changes.entry(collection, f"s3://{bucket}", KEYS[0]).kind == "removed"  # the latest change wins
    assert changes.stats(collection).pending == len(KEYS)
    assert last_event(settings, bucket, KEYS[0])["event"] == "removed"
    health = httpx.get(f"{world['relay']}/health").json()
    assert health["queue_pending"] == len(KEYS) and health["collection"] == collection


def test_a_delivery_is_in_the_queue_when_it_is_answered(world):
    relay, home, collection = world["relay"], world["home"], world["collection"]
    bucket = f"direct-{uuid.uuid4().hex[:6]}"
    answer = post(relay, envelope_of("answered.txt", bucket=bucket))
    assert answer.status_code == 200 and answer.json()["status"] == "queued" and answer.json()["changes"] == 1
    entry = queue(home).entry(collection, f"s3://{bucket}", "answered.txt")  # read at once: no waiting
    assert entry is not None and entry.kind == "created"


def test_a_redelivered_message_emits_nothing_new_and_the_test_event_is_ignored(world):
    relay, api, bucket = world["relay"], world["api"], world["bucket"]
    key = "redelivered file.txt"
    world["s3"].put_object(Bucket=bucket, Key=key, Body=b"x")
    wait_for(lambda: [e for e in events(api, bucket) if e["payload"].get("key") == key], "the first delivery")
    envelope = next(b for b in Capture.bodies if b.get("Type") == "Notification" and quote_plus(key) in b["Message"])
    test_event = next(b for b in Capture.bodies if "s3:TestEvent" in b.get("Message", ""))
    version = queue(world["home"]).entry(world["collection"], f"s3://{bucket}", key).version
    time.sleep(6)  # the event persister flushes every few seconds: count after it settled
    before = events(api, bucket)
    again = post(relay, envelope)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    ignored = post(relay, test_event)
    assert ignored.status_code == 200 and ignored.json() == {"status": "ignored", "reason": "s3:TestEvent"}
    time.sleep(6)
    assert [e["id"] for e in events(api, bucket)] == [e["id"] for e in before]
    assert queue(world["home"]).entry(world["collection"], f"s3://{bucket}", key).version == version


def test_copies_arriving_together_are_queued_and_emitted_once(world):
    relay, api, bucket = world["relay"], world["api"], f"twice-{uuid.uuid4().hex[:6]}"
    envelope = envelope_of("same.txt", bucket=bucket)
    with ThreadPoolExecutor(3) as pool:  # SNS retried while the first attempt was still being written
        answers = list(pool.map(lambda _: post(relay, envelope), range(3)))
    assert sorted(a.json()["status"] for a in answers) == ["duplicate", "duplicate", "queued"]
    assert queue(world["home"]).entry(world["collection"], f"s3://{bucket}", "same.txt").version == 1
    wait_for(lambda: events(api, bucket), "the events")
    time.sleep(6)
    assert [e["event"] for e in events(api, bucket)] == ["s3.object.created"]



def test_a_burst_of_deliveries_is_all_queued_and_wakes_the_drain_a_few_times(prefect_api, tmp_path):
    relay, proc = start_relay(tmp_path, prefect_api, MILLRACE_RELAY_DEBOUNCE_S="1", MILLRACE_RELAY_MAX_WAIT_S="3")
    collection, bucket, n = collection_of(relay), f"burst-{uuid.uuid4().hex[:6]}", 80
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: post(relay, envelope_of(f"burst/{i:03}.txt", bucket=bucket)), range(n)))
        took = time.monotonic() - started
        assert [a.status_code for a in answers] == [200] * n
        assert queue(tmp_path).stats(collection).pending == n
        woken = wait_for(lambda: (w := wakes(prefect_api, collection)) and
                         sum(e["payload"]["changes"] for e in w) == n and w, "wake-ups covering every change")
        time.sleep(6)  # the event persister flushes every few seconds: count after it settled
        woken = wakes(prefect_api, collection)
    finally:
        stop(proc)
    # One at the leading edge, then at most one per debounce_s while the burst lasts, plus the trailing one.
    assert len(woken) <= 2 + took / 1.0 and len(woken) <= n // 8, (len(woken), took)
    assert sum(e["payload"]["changes"] for e in woken) == n


def test_messy_keys_are_queued_decoded_and_relative_to_their_source(prefect_api, tmp_path):
    bucket = f"messy-{uuid.uuid4().hex[:6]}"
    sources = [f"s3://{bucket}/team docs", f"s3://{bucket}/team docs/Ärchiv #2"]
    relay, proc = start_relay(tmp_path, prefect_api, MILLRACE_SOURCES=json.dumps(sources))
    collection = collection_of(relay)
    keys = {"team docs/Q1 budget (draft v2).pdf": ("team docs", "Q1 budget (draft v2).pdf"),
            "team docs/sub dir/café #1 a+b=c 100%.txt": ("team docs", "sub dir/café #1 a+b=c 100%.txt"),
            "team docs/Ärchiv #2/alt/Übersicht Mai.docx": ("team docs/Ärchiv #2", "alt/Übersicht Mai.docx"),
            "elsewhere/x.txt": None}
    try:
        answer = post(relay, envelope_of(*keys, bucket=bucket))
        assert answer.status_code == 200 and answer.json()["changes"] == 3, answer.text
    finally:
        stop(proc)
    changes = queue(tmp_path)
    for key, where in keys.items():
        if where is None:
            continue
        source = f"s3://{bucket}/{quote(where[0])}"  # canonical: the prefix percent-encoded
        entry = changes.entry(collection, source, where[1])
        assert entry is not None and entry.source == source and entry.object == where[1], key
    assert changes.stats(collection).pending == 3


def test_no_wake_up_while_a_live_drain_holds_the_collection(prefect_api, tmp_path):
    """A live drain takes what is queued: a wake-up would only start a run that CANCEL_NEW cancels. Object events
    still go to the feed, and once the drain is gone (released, or its lease expired) wake-ups resume."""
    from millrace import clients
    from millrace.events.drain import LEASE_SOURCE
    from millrace.ledger.lease import Lease

    relay, proc = start_relay(tmp_path, prefect_api, MILLRACE_RELAY_DEBOUNCE_S="0.2")
    collection, bucket = collection_of(relay), f"held-{uuid.uuid4().hex[:6]}"
    ledger = clients.ledger(Settings(home=tmp_path))
    try:
        with Lease(ledger, collection, "a-drain-run", LEASE_SOURCE, ttl_s=60):
            for i, key in enumerate(["während #1.txt", "b+c.txt"]):
                assert post(relay, envelope_of(key, bucket=bucket)).status_code == 200
                wait_for(lambda: len(names(events(prefect_api, bucket), "s3.object.created")) > i, "object events")
            time.sleep(6)  # the event persister flushes every few seconds: look after it settled
            assert wakes(prefect_api, collection) == []
        assert post(relay, envelope_of("after.txt", bucket=bucket)).status_code == 200
        woken = wait_for(lambda: wakes(prefect_api, collection), "a wake-up once the drain let go")
    finally:
        stop(proc)
    assert woken[0]["payload"]["changes"] == 1
    assert queue(tmp_path).stats(collection).pending == 3
    assert "the drain running takes" in (tmp_path / "relay.log").read_text()
