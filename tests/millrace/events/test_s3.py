"""Parsing S3 notifications in every wrapping, ordering changes of one key, and SNS signature checks."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import quote_plus

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from millrace.events.s3 import (BadEvent, S3Change, SignatureError, SnsVerifier, coalesce, newer, parse_body,
                               sns_string_to_sign)

pytestmark = pytest.mark.unit

# Any key a person or a program might write: spaces, accents, URL syntax, percent signs, CJK, emoji.
KEYS = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
SAMPLES = ["Budget 2027 (draft v2).pdf", "Übersicht Mai.docx", "a+b=c&d.txt", "100% #1 ?.txt", "日本語/ノート.md",
           "reports/Q1 budget.pdf", "%2F literally", "plus+and space .txt"]


def s3_record(key: str, event: str = "ObjectCreated:Put", bucket: str = "docs", encode=quote_plus, **obj) -> dict:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-11-21T10:00:00.000Z",
            "eventName": event, "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                                      "object": {"key": encode(key), "size": 3, "eTag": "abc", **obj}}}


def sns_envelope(message: dict | str, message_id: str = "m-1", **extra) -> bytes:
    return json.dumps({"Type": "Notification", "MessageId": message_id, "TopicArn": "arn:aws:sns:us-east-1:1:t",
                       "Message": message if isinstance(message, str) else json.dumps(message),
                       "Timestamp": "2026-11-21T10:00:00.000Z", "SignatureVersion": "1", "Signature": "x",
                       "SigningCertURL": "https://sns.us-east-1.amazonaws.com/c.pem", **extra}).encode()


def eventbridge(key: str, detail_type: str = "Object Created", **obj) -> bytes:
    return json.dumps({"version": "0", "id": "eb-1", "detail-type": detail_type, "source": "aws.s3",
                       "time": "2026-11-21T10:00:00Z", "region": "us-east-1", "resources": ["arn:aws:s3:::docs"],
                       "detail": {"version": "0", "bucket": {"name": "docs"},
                                  "object": {"key": key, "size": 5, "etag": "e1", "sequencer": "617f0829", **obj},
                                  "reason": "PutObject"}}).encode()


def test_sns_notification_gives_created_and_removed_changes_and_skips_other_events():
    message = {"Records": [s3_record("a b.txt", sequencer="0A"), s3_record("gone.txt", "ObjectRemoved:Delete"),
                           s3_record("cold.txt", "ObjectRestore:Completed")]}
    notice = parse_body(sns_envelope(message, "msg-7"))
    assert (notice.action, notice.source, notice.message_id) == ("changes", "sns", "msg-7")
    assert [(c.bucket, c.key, c.kind, c.index) for c in notice.changes] == [
        ("docs", "a b.txt", "created", 0), ("docs", "gone.txt", "removed", 1)]
    first = notice.changes[0]
    assert (first.size, first.etag, first.sequencer, first.event_name) == (3, "abc", "0A", "ObjectCreated:Put")
    assert first.event_time == datetime(2026, 11, 21, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize("body", [
    sns_envelope({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "docs"}),
    json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "docs"}).encode()])
def test_s3_test_event_is_recognised(body):
    notice = parse_body(body)
    assert notice.action == "test" and not notice.changes


def test_subscription_messages():
    confirm = parse_body(json.dumps({"Type": "SubscriptionConfirmation", "MessageId": "c1", "Token": "t",
                                     "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Confirm"}).encode())
    assert confirm.action == "subscribe" and confirm.subscribe_url.endswith("Action=Confirm")
    assert parse_body(json.dumps({"Type": "UnsubscribeConfirmation", "MessageId": "u1"}).encode()).action \
        == "unsubscribe"


def test_minio_webhook_body_and_its_stable_message_id():
    body = {"EventName": "s3:ObjectCreated:Put", "Key": "docs/Übersicht Mai.docx",
            "Records": [s3_record("Übersicht Mai.docx", "s3:ObjectCreated:Put", encode=lambda k: quote_plus(k, safe=""))]}
    raw = json.dumps(body).encode()
    notice = parse_body(raw)
    assert notice.source == "minio" and [c.key for c in notice.changes] == ["Übersicht Mai.docx"]
    assert notice.changes[0].event_name == "ObjectCreated:Put"
    assert parse_body(raw).message_id == notice.message_id  # a redelivered body is the same message
    body["Records"][0]["s3"]["object"]["sequencer"] = "FF"
    assert parse_body(json.dumps(body).encode()).message_id != notice.message_id


def test_raw_sns_delivery_takes_the_message_id_header():
    raw = json.dumps({"Records": [s3_record("x.txt")]}).encode()
    notice = parse_body(raw, message_id="sns-raw-1")
    assert (notice.source, notice.message_id) == ("s3", "sns-raw-1")
    assert notice.changes[0].event_id == parse_body(raw, message_id="sns-raw-1").changes[0].event_id


def test_eventbridge_created_deleted_and_other_types():
    created = parse_body(eventbridge(quote_plus("reports/Q1 budget.pdf", safe="/")))
    [change] = created.changes
    assert (change.key, change.kind, change.size, change.etag, change.sequencer) == (
        "reports/Q1 budget.pdf", "created", 5, "e1", "617f0829")
    assert created.message_id == "eventbridge:eb-1"
    assert parse_body(eventbridge("x", "Object Deleted")).changes[0].kind == "removed"
    assert parse_body(eventbridge("x", "Object Restore Completed")).action == "ignored"
    # moto sends raw keys, "eTag" and epoch seconds
    raw = json.loads(eventbridge("a+b c.txt", etag=None, eTag="m1"))
    raw["time"] = 1_700_000_000
    [change] = parse_body(json.dumps(raw).encode(), eventbridge_keys_encoded=False).changes
    assert (change.key, change.etag, change.event_time.year) == ("a+b c.txt", "m1", 2023)


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b"\xff\xfe", b'"text"', b'{"hello": 1}',
    json.dumps({"Type": "Notification", "Message": "{}"}).encode(),  # no MessageId
    sns_envelope("this is not json"), sns_envelope("[1, 2]"), sns_envelope({"Records": "nope"}),
    sns_envelope({"Records": [{"eventName": "ObjectCreated:Put"}]}),
    sns_envelope({"Records": [s3_record("k", size="big")]}),
    json.dumps({"source": "aws.s3", "detail-type": "Object Created", "detail": {}}).encode(),
])
def test_malformed_bodies_are_bad_events(body):
    with pytest.raises(BadEvent):
        parse_body(body)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["Type", "MessageId", "Message", "Records", "eventName", "s3", "bucket",
                                         "object", "key", "name", "source", "detail-type", "detail", "EventName"]),
                        inner, max_size=4), max_leaves=12)


@given(st.binary(max_size=64) | JSON.map(lambda d: json.dumps(d).encode()))
@settings(max_examples=300, deadline=None)
def test_any_body_parses_or_is_a_bad_event(raw):
    try:
        parse_body(raw)
    except BadEvent:
        pass


@given(KEYS | st.sampled_from(SAMPLES))
@settings(max_examples=300, deadline=None)
def test_any_key_round_trips_through_every_producers_encoding(key):
    aws = parse_body(sns_envelope({"Records": [s3_record(key, encode=lambda k: quote_plus(k, safe="/"))]}))
    moto = parse_body(sns_envelope({"Records": [s3_record(key, encode=quote_plus)]}))  # encodes '/' too
    minio = parse_body(json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"docs/{key}",
                                   "Records": [s3_record(key, "s3:ObjectCreated:Put", encode=quote_plus)]}).encode())
    bridge = parse_body(eventbridge(quote_plus(key, safe="/")))
    bridge_raw = parse_body(eventbridge(key), eventbridge_keys_encoded=False)
    assert {n.changes[0].key for n in (aws, moto, minio, bridge, bridge_raw)} == {key}


def change(key: str, seq: str = "", t: int | None = None, index: int = 0, kind: str = "created") -> S3Change:
    return S3Change(bucket="docs", key=key, kind=kind, sequencer=seq, message_id="m", index=index,
                    event_time=None if t is None else datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=t))


def test_sequencers_of_different_lengths_compare_right_padded():
    assert newer(change("k", "0A"), change("k", "09FF"))  # 0A00 > 09FF
    assert not newer(change("k", "09FF"), change("k", "0A"))
    assert newer(change("k", "", t=5), change("k", "", t=1))  # no sequencer: event time
    assert newer(change("k", "01", t=1), change("k", "01", t=0))  # equal sequencers: event time


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c d"]), st.integers(0, 16**10 - 1)), min_size=1, max_size=12,
                unique_by=lambda t: t[1]), st.randoms())
@settings(max_examples=200, deadline=None)
def test_coalesce_keeps_the_latest_change_of_each_key_in_any_arrival_order(items, rnd):
    # S3 sequencers of one key have one length in practice; mixed lengths are checked above.
    changes = [change(k, format(s, "010X"), index=i, kind="created" if s % 2 else "removed")
               for i, (k, s) in enumerate(items)]
    expected = {}
    for c in changes:
        if c.key not in expected or int(c.sequencer, 16) > int(expected[c.key].sequencer, 16):
            expected[c.key] = c
    shuffled = list(changes)
    rnd.shuffle(shuffled)
    kept = coalesce(shuffled)
    assert len(kept) == len({c.key for c in changes})
    assert {c.key: c for c in kept} == expected


def test_event_ids_are_stable_per_delivery_and_position():
    a, b = change("k", index=0), change("k", index=1)
    assert a.event_id == change("k", index=0).event_id != b.event_id
    assert a.event_id != S3Change(**{**a.model_dump(), "message_id": "other"}).event_id


# SNS signatures, with a key and certificate of our own


def make_signer(days: int = 30):
    """A private key and its self-signed certificate (PEM), as SNS holds them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


def sign(envelope: dict, key, version: str = "2", cert_url: str = "https://sns.us-east-1.amazonaws.com/c.pem") -> dict:
    envelope = {**envelope, "SignatureVersion": version, "SigningCertURL": cert_url}
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(sns_string_to_sign(envelope), padding.PKCS1v15(), algorithm)
    return {**envelope, "Signature": base64.b64encode(signature).decode()}


NOTIFICATION = {"Type": "Notification", "MessageId": "m1", "TopicArn": "arn:aws:sns:us-east-1:1:t",
                "Message": "{\"Records\": []}\nline two", "Timestamp": "2026-11-21T10:00:00.000Z"}


def test_string_to_sign_follows_the_aws_field_order():
    assert sns_string_to_sign(NOTIFICATION) == (
        "Message\n{\"Records\": []}\nline two\nMessageId\nm1\nTimestamp\n2026-11-21T10:00:00.000Z\n"
        "TopicArn\narn:aws:sns:us-east-1:1:t\nType\nNotification\n").encode()
    assert b"Subject\nHi\nTimestamp" in sns_string_to_sign({**NOTIFICATION, "Subject": "Hi"})
    confirm = {"Type": "SubscriptionConfirmation", "MessageId": "c", "Token": "tok", "TopicArn": "arn",
               "Message": "m", "SubscribeURL": "https://x/", "Timestamp": "t", "Subject": "ignored"}
    assert sns_string_to_sign(confirm) == (b"Message\nm\nMessageId\nc\nSubscribeURL\nhttps://x/\nTimestamp\nt\n"
                                           b"Token\ntok\nTopicArn\narn\nType\nSubscriptionConfirmation\n")


@pytest.mark.parametrize("version", ["1", "2"])
def test_signatures_verify_and_tampering_is_caught(version):
    key, pem = make_signer()
    fetched = []
    verifier = SnsVerifier(lambda url: fetched.append(url) or pem)
    signed = sign(NOTIFICATION, key, version)
    verifier.verify(signed)
    verifier.verify(sign({**NOTIFICATION, "MessageId": "m2"}, key, version))
    assert len(fetched) == 1  # the certificate is fetched once
    for tampered in ({**signed, "Message": "{}"}, {**signed, "Subject": "added"},
                     {**signed, "SignatureVersion": "2" if version == "1" else "1"}):
        with pytest.raises(SignatureError, match="does not match"):
            verifier.verify(tampered)
    other_key, _ = make_signer()
    with pytest.raises(SignatureError):
        verifier.verify(sign(NOTIFICATION, other_key, version))


def test_untrusted_certificate_urls_are_never_fetched():
    key, pem = make_signer()
    fetched = []
    verifier = SnsVerifier(lambda url: fetched.append(url) or pem)
    for url in ("https://evil.example.com/c.pem", "http://sns.us-east-1.amazonaws.com/c.pem",
                "https://sns.us-east-1.amazonaws.com.evil.com/c.pem"):
        with pytest.raises(SignatureError, match="trusts"):
            verifier.verify(sign(NOTIFICATION, key, "2", cert_url=url))
    assert not fetched
    with pytest.raises(SignatureError, match="SignatureVersion"):
        verifier.verify({**sign(NOTIFICATION, key), "SignatureVersion": "3"})
    with pytest.raises(SignatureError, match="base64"):
        verifier.verify({**sign(NOTIFICATION, key), "Signature": "%%%"})


def test_an_expired_certificate_is_refused():
    key, pem = make_signer(days=-1)
    with pytest.raises(SignatureError, match="expired"):
        SnsVerifier(lambda url: pem).verify(sign(NOTIFICATION, key))
