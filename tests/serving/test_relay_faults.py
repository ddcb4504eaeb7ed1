"""The relay killed (SIGKILL) while a delivery is between "received" and "acknowledged": the sender never got a 200,
so it delivers the same SNS message again to the restarted relay, and Prefect ends with each object change once.

The Prefect API sits behind a TCP fault proxy: "hold" accepts the relay's emit and never answers (it is killed
before Prefect has anything), "swallow" forwards the emit but drops the answer (Prefect has the events, the relay
never learns it, and re-emits them after the restart)."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from tests.faultproxy import FaultProxy, wait_until
from tests.millrace.test_s3events import s3_record
from tests.serving.test_relay import events, names, post, start_relay, stop

pytestmark = pytest.mark.integration
KEYS = ["in box/café #1.txt", "a+b = c 100%.md", "Übersicht Mai (v2).pdf"]


@pytest.mark.parametrize("fault", ["hold", "swallow"])
def test_a_relay_killed_before_it_answers_loses_and_duplicates_nothing_on_redelivery(prefect_api, tmp_path, fault):
    api = urlsplit(prefect_api)
    bucket = f"killed-{fault}-{uuid.uuid4().hex[:6]}"
    envelope = {"Type": "Notification", "MessageId": str(uuid.uuid4()), "TopicArn": "arn:aws:sns:us-east-1:1:t",
                "Timestamp": "2026-11-21T10:00:00.000Z", "Message": json.dumps({"Records": [
                    s3_record(k, bucket=bucket, sequencer=f"0{i}") for i, k in enumerate(KEYS)]})}
    home = tmp_path / "relay-home"
    with FaultProxy((api.hostname, api.port)) as proxy:
        proxy.set_mode(fault)
        # Long emit timeouts: the POST is surely still in flight when the relay dies.
        relay, proc = start_relay(home, f"{proxy.url}{api.path}", MILLRACE_RELAY_EMIT_TIMEOUT_S="60")
        answers: list = []
        sender = threading.Thread(target=lambda: answers.append(_post_or_error(relay, envelope)), daemon=True)
        try:
            sender.start()
            # The relay has taken the delivery and is emitting: its POST to /events reached the proxy (and, when
            # swallowed, Prefect has stored the events).
            wait_until(lambda: proxy.accepted >= 1, "the relay's emit to reach the proxy", timeout=30, every=0.05)
            if fault == "swallow":
                wait_until(lambda: len(events(prefect_api, bucket)) == len(KEYS) + 1, "Prefect to store the events",
                           timeout=30)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            sender.join(30)
        finally:
            stop(proc)
        assert not sender.is_alive() and isinstance(answers[0], httpx.TransportError), answers  # no 200: redeliver

        proxy.set_mode("pass")
        relay, proc = start_relay(home, f"{proxy.url}{api.path}")  # same token, same MILLRACE_HOME (event log)
        try:
            again = post(relay, envelope)
            assert again.status_code == 200 and again.json()["status"] == "emitted", again.text
            third = post(relay, envelope)  # a late duplicate of the same message
            assert third.status_code == 200 and third.json()["status"] == "duplicate"
        finally:
            stop(proc)
    wait_until(lambda: len(events(prefect_api, bucket)) >= len(KEYS) + 1, "the events in Prefect", timeout=60)
    time.sleep(6)  # the event persister flushes every few seconds: count after it settled
    found = events(prefect_api, bucket)
    assert sorted(e["payload"]["key"] for e in names(found, "s3.object.created")) == sorted(KEYS)
    batches = names(found, "s3.objects.changed")
    assert len(batches) == 1 and sorted(batches[0]["payload"]["created"]) == sorted(KEYS)
    assert len(found) == len(KEYS) + 1


def _post_or_error(relay: str, envelope: dict):
    try:
        return post(relay, envelope)
    except httpx.TransportError as exc:
        return exc
