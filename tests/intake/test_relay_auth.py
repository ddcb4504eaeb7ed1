"""Who the relay believes: SNS signatures (checked against certificates it fetches only from allowed URLs) and the
subscription handshake, and a relay that will not start without a proper token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import ROOT, free_port
from tests.intake.relay_harness import Capture, events, post, serve, start_relay, stop, wait_for
from tests.millrace.events.test_s3 import make_signer, s3_record, sign

pytestmark = pytest.mark.integration


def test_sns_signatures_and_subscription_confirmation(prefect_api, tmp_path):
    site, server = serve(Capture)
    key, pem = make_signer()
    Capture.files["/cert.pem"], Capture.files["/confirm"] = pem, b"<ConfirmSubscriptionResponse/>"
    relay, proc = start_relay(tmp_path, prefect_api, MILLRACE_RELAY_VERIFY_SNS="true",
                              MILLRACE_RELAY_SNS_URL_PATTERN=r"^http://127\.0\.0\.1:\d+/")
    cert_url, bucket = f"{site}/cert.pem", f"signed-{uuid.uuid4().hex[:6]}"
    base = {"MessageId": str(uuid.uuid4()), "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Timestamp": "2026-11-21T10:00:00.000Z"}
    try:
        confirmation = sign({**base, "Type": "SubscriptionConfirmation", "Token": "abc", "Message": "confirm me",
                             "SubscribeURL": f"{site}/confirm?Token=abc"}, key, "2", cert_url)
        assert post(relay, confirmation).json() == {"status": "confirmed"}
        assert Capture.hits.count("/confirm?Token=abc") == 1
        message = json.dumps({"Records": [s3_record("signed doc.pdf", bucket=bucket)]})
        notification = sign({**base, "Type": "Notification", "Message": message}, key, "1", cert_url)
        assert post(relay, notification).json()["status"] == "queued"
        wait_for(lambda: events(prefect_api, bucket), "the signed notification's events")
        for bad in ({**notification, "Message": message.replace("signed", "forged")},
                    {**notification, "Signature": "EXAMPLEpH+=="},
                    sign({**base, "Type": "Notification", "Message": message}, make_signer()[0], "2", cert_url),
                    sign({**base, "Type": "Notification", "Message": message}, key, "2",
                         "https://attacker.example.com/cert.pem")):
            rejected = post(relay, bad)
            assert rejected.status_code == 403 and "signature" in rejected.json()["detail"].lower(), rejected.text
        assert post(relay, sign({**base, "Type": "UnsubscribeConfirmation", "Token": "t", "Message": "bye",
                                 "SubscribeURL": f"{site}/confirm"}, key, "2", cert_url)).status_code == 200
        assert Capture.hits.count("/cert.pem") == 1  # fetched once, then cached
        outside = sign({**base, "Type": "SubscriptionConfirmation", "Token": "x", "Message": "m",
                        "SubscribeURL": "https://attacker.example.com/confirm"}, key, "2", cert_url)
        assert post(relay, outside).status_code == 403
    finally:
        stop(proc)
        server.shutdown()


@pytest.mark.parametrize("token", [None, "short"])
def test_the_relay_refuses_to_start_without_a_proper_token(tmp_path, token):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_RELAY_")}
    env.update({"MILLRACE_RELAY_TOKEN": token} if token else {})
    done = subprocess.run([sys.executable, "-m", "intake.relay", "--port", str(free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "MILLRACE_RELAY_TOKEN" in done.stderr and "secrets.token_urlsafe" in done.stderr
