"""What the relay answers to a request before any change is queued: the token, malformed and oversized bodies, the
MinIO and EventBridge formats, and the 503 of a queue that cannot be written (nothing acknowledged); without
Prefect it still queues."""

from __future__ import annotations

import base64
import time
import uuid
from urllib.parse import quote_plus

import httpx
import pytest

from millrace.events.queue import meta as queue_meta
from tests.conftest import free_port
from tests.millrace.events.test_s3 import s3_record
from tests.intake.relay_harness import (TOKEN, collection_of, envelope_of, events, post, queue, start_relay, stop,
                                         wait_for, world)

pytestmark = pytest.mark.integration


def test_requests_without_the_token_are_refused(world):
    relay, test_event = world["relay"], {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "x"}
    basic = base64.b64encode(f"sns:{TOKEN}".encode()).decode()
    for attempt in (dict(token=None), dict(token="wrong"), dict(token=None, headers={"Authorization": "Bearer no"}),
                    dict(token=None, headers={"Authorization": f"Token {TOKEN[:-1]}"}),
                    dict(token=None, headers={"Authorization": f"{TOKEN} {TOKEN}x"}),
                    dict(token=None, headers={"X-Millrace-Token": TOKEN[:-1]}),
                    dict(token=None, headers={"Authorization": "Basic " + base64.b64encode(b"a:b").decode()})):
        refused = post(relay, test_event, **attempt)
        assert refused.status_code == 401 and "token" in refused.json()["detail"], attempt
    # MinIO's auth_token arrives as the whole header (`Token <t>`, `Bearer <t>`) or, from older releases, bare.
    for accepted in (dict(), dict(token=None, headers={"Authorization": f"Bearer {TOKEN}"}),
                     dict(token=None, headers={"Authorization": f"Token {TOKEN}"}),
                     dict(token=None, headers={"Authorization": TOKEN}),
                     dict(token=None, headers={"X-Millrace-Token": TOKEN}),
                     dict(token=None, headers={"Authorization": f"Basic {basic}"})):
        assert post(relay, test_event, **accepted).status_code == 200, accepted


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"Type": "Notification"}', b'{"Records": "x"}',
                                  b'{"Type": "Notification", "MessageId": "m", "Message": "nope"}',
                                  b'{"source": "aws.s3", "detail-type": "Object Created", "detail": 1}',
                                  b'{"Type": [], "Records": [{"eventName": 5}]}'])
def test_malformed_bodies_are_400_with_a_reason(world, body):
    answer = post(world["relay"], body)
    assert answer.status_code == 400 and answer.json()["detail"]


def test_an_oversized_body_is_refused_before_parsing(world):
    answer = post(world["relay"], b"{" + b" " * (1024 * 1024) + b"}")
    assert answer.status_code == 413 and "MILLRACE_RELAY_MAX_BODY_BYTES" in answer.json()["detail"]


def test_minio_and_eventbridge_bodies(world):
    relay, api = world["relay"], world["api"]
    bucket = f"other-{uuid.uuid4().hex[:6]}"
    minio = {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/café notes.txt",
             "Records": [s3_record("café notes.txt", "s3:ObjectCreated:Put", bucket=bucket,
                                   encode=lambda k: quote_plus(k, safe=""))]}
    assert post(relay, minio, token=None, headers={"Authorization": f"Bearer {TOKEN}"}).json()["status"] == "queued"
    bridge = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Object Deleted", "source": "aws.s3",
              "time": "2026-11-21T10:00:00Z", "detail": {"bucket": {"name": bucket},
                                                         "object": {"key": "old+report.pdf", "sequencer": "0B"}}}
    assert post(relay, bridge, token=None, headers={"X-Millrace-Token": TOKEN}).json()["status"] == "queued"
    found = wait_for(lambda: (e := events(api, bucket)) and len(e) >= 2 and e, "two object events")
    assert {(e["event"], e["payload"].get("key")) for e in found} >= {
        ("s3.object.created", "café notes.txt"), ("s3.object.removed", "old report.pdf")}
    changes = queue(world["home"])
    assert changes.entry(world["collection"], f"s3://{bucket}", "café notes.txt").kind == "created"
    assert changes.entry(world["collection"], f"s3://{bucket}", "old report.pdf").kind == "removed"


def test_a_relay_that_cannot_reach_prefect_still_queues_and_says_so_once(tmp_path):
    relay, proc = start_relay(tmp_path, f"http://127.0.0.1:{free_port()}/api",
                              MILLRACE_RELAY_RETRY_DELAYS="[0.2, 0.4]", MILLRACE_RELAY_DEBOUNCE_S="0.1")
    collection = collection_of(relay)
    try:
        for key in ("first.txt", "second.txt", "third.txt"):
            started = time.monotonic()
            answer = post(relay, envelope_of(key, bucket="down"))
            assert answer.status_code == 200 and answer.json()["status"] == "queued", answer.text
            assert time.monotonic() - started < 2  # not held up by the emit's retries
            assert queue(tmp_path).entry(collection, "s3://down", key) is not None
            time.sleep(1)  # each its own flush, each failing
        health = httpx.get(f"{relay}/health").json()
        assert health["queue_pending"] == 3 and health["emitting"] is False
    finally:
        stop(proc)
    log = (tmp_path / "relay.log").read_text()
    assert "giving up" in log and TOKEN not in log  # the token in the subscription URL is never logged
    assert log.count("could not emit events to the Prefect API") == 1, log  # once per outage


def test_a_queue_that_cannot_be_written_is_503_and_nothing_is_acknowledged(prefect_api, tmp_path):
    relay, proc = start_relay(tmp_path, prefect_api)
    collection, bucket = collection_of(relay), f"unwritable-{uuid.uuid4().hex[:6]}"
    changes = queue(tmp_path)
    envelope = envelope_of("lost?.txt", bucket=bucket)
    try:
        queue_meta.drop_all(changes.engine)  # the relay's next write fails, as on a broken ledger database
        for _ in range(2):  # not remembered as delivered: the second attempt is not a "duplicate"
            answer = post(relay, envelope)
            assert answer.status_code == 503, answer.text
            assert "change queue" in answer.json()["detail"] and "delivers again" in answer.json()["detail"]
        time.sleep(1)
        queue_meta.create_all(changes.engine)
        answer = post(relay, envelope)  # the sender's next attempt
        assert answer.status_code == 200 and answer.json()["status"] == "queued", answer.text
        assert changes.entry(collection, f"s3://{bucket}", "lost?.txt") is not None
    finally:
        stop(proc)
