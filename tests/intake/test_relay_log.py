"""The relay says what it did not take: every refused or ignored delivery leaves one line in its log with the reason,
and neither the relay's token nor a wrong one a sender presented ever appears there."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from tests.intake.relay_harness import TOKEN, post, start_relay, stop
from tests.millrace.events.test_s3 import eventbridge, s3_record

pytestmark = pytest.mark.integration
BUCKET = "log-docs"
WRONG = "wrong-" + uuid.uuid4().hex  # what a misconfigured sender presents: a secret too, never logged


def minio(*keys: str) -> dict:
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"{BUCKET}/{keys[0]}",
            "Records": [s3_record(k, "s3:ObjectCreated:Put", bucket=BUCKET) for k in keys]}


def lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "refused delivery" in line or "ignored delivery" in line]


def test_each_refused_or_ignored_delivery_is_one_log_line_with_its_reason_and_no_token(prefect_api, tmp_path):
    relay, proc = start_relay(tmp_path, prefect_api, MILLRACE_SOURCES=json.dumps([f"s3://{BUCKET}/docs"]))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        # (request, status, what its log line must say), in order
        cases = [
            (dict(body={"Event": "s3:TestEvent"}, token=None), 401, "401 missing or wrong token (sent: none)"),
            (dict(body={"Event": "s3:TestEvent"}, token=WRONG), 401, "(sent: ?token=)"),
            (dict(body={"Event": "s3:TestEvent"}, token=None, headers={"Authorization": f"Token {WRONG}"}), 401,
             "(sent: Authorization: Token ...)"),
            (dict(body={"Event": "s3:TestEvent"}, token=None, headers={"Authorization": f"{WRONG} x"}), 401,
             "(sent: Authorization: another form)"),
            (dict(body=b"not json"), 400, "400 the body is not JSON"),
            (dict(body=b"{" + b" " * (1024 * 1024) + b"}"), 413, "413 a body over MILLRACE_RELAY_MAX_BODY_BYTES"),
            (dict(body={"Type": "SubscriptionConfirmation", "MessageId": "sub-1", "Token": "t", "Message": "m",
                        "SubscribeURL": "https://attacker.example.com/confirm"}), 403,
             "403 SubscribeURL 'https://attacker.example.com/confirm' does not match"),
            (dict(body={"Event": "s3:TestEvent"}), 200, "s3:TestEvent"),
            (dict(body=eventbridge("docs/a.txt", "Object Restore Completed")), 200,
             "detail-type 'Object Restore Completed' is not an object change"),
            (dict(body=minio("private/salaries.txt"), token=None, headers=bearer), 200,
             f"all 1 key(s) lie outside MILLRACE_SOURCES ['s3://{BUCKET}/docs']"),
        ]
        for request, status, _ in cases:
            answer = post(relay, request.pop("body"), **request)
            assert answer.status_code == status, answer.text
        inside = minio("docs/handbook.txt")
        assert post(relay, inside, token=None, headers={"Authorization": f"Token {TOKEN}"}).json()["status"] == \
            "queued"
        assert post(relay, inside, token=None, headers={"Authorization": TOKEN}).json()["status"] == "duplicate"
        mixed = {"Records": [s3_record("docs/policy.txt", bucket=BUCKET), s3_record("tmp/x.txt", bucket=BUCKET)]}
        queued = post(relay, mixed, token=None, headers=bearer).json()
        assert queued["status"] == "queued" and queued["changes"] == 1
    finally:
        stop(proc)
    log = (tmp_path / "relay.log").read_text()
    said = lines(log)
    expected = [why for _, _, why in cases] + ["a copy of a delivery already queued"]
    assert len(said) == len(expected), "\n".join(said)
    for line, why in zip(said, expected):
        assert why in line, (line, why)
    assert all("refused delivery from 127.0.0.1" in line for line in said[:7])
    assert all("ignored delivery" in line for line in said[7:])
    assert "1 of 2 keys lie outside MILLRACE_SOURCES" in log
    assert TOKEN not in log and WRONG not in log
    assert base64.b64encode(TOKEN.encode()).decode() not in log
