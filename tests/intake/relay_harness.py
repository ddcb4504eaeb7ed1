"""The S3 event relay in its own process, and what its tests talk to it with: a token, request helpers, a capture
subscriber, readers of the Prefect events and the change queue it writes, and `world` (moto S3 and SNS delivering
a bucket's notifications to a relay and a capture subscriber)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import httpx
import pytest

from intake.emit import WAKE_EVENT
from millrace.config import Settings
from millrace.events.queue import ChangeQueue
from tests.conftest import ROOT, free_port
from tests.millrace.events.test_s3 import s3_record

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
        proc = subprocess.Popen([sys.executable, "-m", "intake.relay", "--host", "127.0.0.1", "--port", str(port)],
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

