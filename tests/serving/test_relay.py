"""The S3 event relay end to end: moto S3 -> bucket notification -> SNS topic -> HTTP subscription -> the relay in
its own process -> the change queue in the ledger database (before the 200) and the real Prefect API (object events
and the wake-up of the collection's drain, after it)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, quote_plus

import boto3
import httpx
import pytest

from millrace.changequeue import ChangeQueue, meta as queue_meta
from millrace.config import Settings
from millrace.eventlog import last_event
from serving.emit import WAKE_EVENT
from tests.conftest import ROOT, free_port
from tests.millrace.test_s3events import s3_record

pytestmark = pytest.mark.integration
TOKEN = "relay-test-token-" + uuid.uuid4().hex
KEYS = ["reports/Q1 budget (draft v2).pdf", "Übersicht Mai.docx", "a+b=c 100% #1.txt"]


class Capture(BaseHTTPRequestHandler):
    """A second SNS subscriber: keeps every envelope, so a test can deliver one again. Also serves files."""
    bodies: list[dict] = []
    files: dict[str, bytes] = {}
    hits: list[str] = []

    def do_POST(self):
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def do_GET(self):
        type(self).hits.append(self.path)
        body = type(self).files.get(self.path.split("?")[0])
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


def serve(handler) -> tuple[str, ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def start_relay(home: Path, prefect_url: str, **env: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MILLRACE_RELAY_", "PREFECT_API_"))}
    environ.update({"MILLRACE_HOME": str(home), "MILLRACE_RELAY_TOKEN": TOKEN, "PREFECT_API_URL": prefect_url,
                    "MILLRACE_COLLECTION": f"relay_{uuid.uuid4().hex[:8]}", "MILLRACE_RELAY_DEBOUNCE_S": "0.5",
                    "MILLRACE_RELAY_MAX_WAIT_S": "3", **env})
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "relay.log", "a") as out:  # a file, not a pipe nobody drains
        proc = subprocess.Popen([sys.executable, "-m", "serving.relay", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the relay exited: {(home / 'relay.log').read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("the relay did not answer /health")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def post(url: str, body: bytes | dict, token: str | None = TOKEN, **kw) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    params = {"token": token} if token else {}
    return httpx.post(f"{url}/s3/events", content=raw, params=params, timeout=60,
                      headers={"Content-Type": "text/plain; charset=UTF-8", **kw.pop("headers", {})}, **kw)


def events(api: str, bucket: str, resource: str = "") -> list[dict]:
    page = httpx.post(f"{api}/events/filter", timeout=30, json={
        "filter": {"resource": {"id": [resource or f"s3.bucket.{bucket}"]}, "order": "ASC"}, "limit": 50})
    page.raise_for_status()
    return page.json()["events"]


def wakes(api: str, collection: str) -> list[dict]:
    return names(events(api, "", f"millrace.collection.{collection}"), WAKE_EVENT)


def collection_of(url: str) -> str:
    return httpx.get(f"{url}/health", timeout=10).json()["collection"]


def queue(home: Path) -> ChangeQueue:
    """The change queue the relay writes, opened on the same ledger URL."""
    return ChangeQueue(Settings(home=home).resolved_ledger_url)


def envelope_of(*keys: str, bucket: str, kind: str = "ObjectCreated:Put", message_id: str = "") -> dict:
    return {"Type": "Notification", "MessageId": message_id or str(uuid.uuid4()),
            "TopicArn": "arn:aws:sns:us-east-1:1:t", "Timestamp": "2026-11-21T10:00:00.000Z",
            "Message": json.dumps({"Records": [s3_record(k, kind, bucket=bucket, sequencer=f"{i + 1:02X}")
                                               for i, k in enumerate(keys)]})}


def wait_for(fn, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world(prefect_api, moto_s3, tmp_path_factory):
    """A relay, a capture subscriber, and a moto bucket whose notifications reach both through one SNS topic."""
    home = tmp_path_factory.mktemp("relay-home")
    relay, proc = start_relay(home, prefect_api)
    capture, capture_server = serve(Capture)
    aws = dict(endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    s3, sns = boto3.client("s3", **aws), boto3.client("sns", **aws)
    bucket = f"relay-{uuid.uuid4().hex[:8]}"
    topic = sns.create_topic(Name=bucket)["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"{relay}/s3/events?token={TOKEN}")
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"{capture}/sns")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"TopicConfigurations": [
        {"TopicArn": topic, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    yield dict(relay=relay, api=prefect_api, s3=s3, bucket=bucket, home=home, proc=proc,
               collection=collection_of(relay))
    stop(proc)
    capture_server.shutdown()


def names(found: list[dict], name: str) -> list[dict]:
    return [e for e in found if e["event"] == name]


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
    from millrace.drain import LEASE_SOURCE
    from millrace.lease import Lease

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
