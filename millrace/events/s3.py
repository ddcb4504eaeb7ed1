"""S3 change notifications, whatever carried them: an SNS envelope (S3 -> SNS -> HTTP), a MinIO webhook body, an
EventBridge event (API destination) or a bare S3 `Records` document (SNS raw delivery). All become `S3Change`s.

Keys arrive URL-encoded with '+' for a space in S3 and MinIO notifications. EventBridge is not documented either way;
AWS Lambda Powertools decodes its keys with unquote_plus as well, so that is the default, but producers that send
raw EventBridge keys (moto does) need `eventbridge_keys_encoded=False`.

SNS signatures: https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict

from millrace.uris import s3_event_key

# Fixed forever: event ids derive from it, and a redelivery must produce the ids it produced the first time.
EVENT_NAMESPACE = uuid.UUID("3f6f1c52-8d0e-5b6a-9a8e-6d1b7f0c2a41")
DEFAULT_SNS_URL_PATTERN = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
_SNS_TYPES = {"Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"}
_EVENTBRIDGE_KINDS = {"Object Created": "created", "Object Deleted": "removed"}


class BadEvent(ValueError):
    """The body is not a notification this relay understands; the message says what is wrong (HTTP 400)."""


class SignatureError(ValueError):
    """An SNS message whose signature does not verify, or whose certificate may not be trusted (HTTP 403)."""


class S3Change(BaseModel):
    """One object created or removed, key decoded."""
    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    kind: Literal["created", "removed"]
    event_name: str = ""  # as the producer named it: ObjectCreated:Put, Object Deleted, ...
    size: int | None = None
    etag: str = ""
    sequencer: str = ""
    version_id: str = ""
    event_time: datetime | None = None
    message_id: str  # the delivery that carried it: SNS MessageId, EventBridge id, hash of a MinIO body
    index: int = 0  # its place in that delivery

    @property
    def event_id(self) -> uuid.UUID:
        """The same change in the same delivery gets the same id, so a redelivery cannot count twice."""
        return uuid.uuid5(EVENT_NAMESPACE, f"{self.message_id}#{self.index}")


class Notice(BaseModel):
    """What one POST body means."""
    action: Literal["changes", "subscribe", "unsubscribe", "test", "ignored"]
    source: Literal["sns", "minio", "eventbridge", "s3"]
    message_id: str
    changes: list[S3Change] = []
    subscribe_url: str = ""
    reason: str = ""  # why it is ignored
    envelope: dict[str, Any] = {}  # the SNS envelope, for signature verification


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):  # moto's EventBridge events carry epoch seconds
        return datetime.fromtimestamp(value, timezone.utc)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _kind(event_name: str) -> Literal["created", "removed"] | None:
    name = event_name.removeprefix("s3:")
    return "created" if name.startswith("ObjectCreated:") else "removed" if name.startswith("ObjectRemoved:") else None


def parse_records(doc: dict, message_id: str) -> list[S3Change]:
    """The object changes of an S3 notification document (`Records`); other event types (restore, replication,
    lifecycle transitions) are not changes of content and are skipped."""
    records = doc.get("Records")
    if not isinstance(records, list):
        raise BadEvent("an S3 notification needs a list of Records")
    changes = []
    for index, record in enumerate(records):
        try:
            kind = _kind(record["eventName"])
            if kind is None:
                continue
            obj = record["s3"]["object"]
            changes.append(S3Change(
                bucket=record["s3"]["bucket"]["name"], key=s3_event_key(obj["key"]), kind=kind,
                event_name=record["eventName"].removeprefix("s3:"), size=obj.get("size"),
                etag=obj.get("eTag") or obj.get("etag") or "", sequencer=obj.get("sequencer") or "",
                version_id=obj.get("versionId") or "", event_time=_time(record.get("eventTime")),
                message_id=message_id, index=index))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise BadEvent(f"record {index} is not an S3 object event: {type(exc).__name__}: {exc}") from None
    return changes


def _eventbridge(doc: dict, keys_encoded: bool) -> Notice:
    message_id = f"eventbridge:{doc.get('id') or ''}"
    kind = _EVENTBRIDGE_KINDS.get(doc["detail-type"])
    if kind is None:
        return Notice(action="ignored", source="eventbridge", message_id=message_id,
                      reason=f"detail-type {doc.get('detail-type')!r} is not an object change")
    try:
        detail, obj = doc["detail"], doc["detail"]["object"]
        change = S3Change(
            bucket=detail["bucket"]["name"], key=s3_event_key(obj["key"]) if keys_encoded else obj["key"], kind=kind,
            event_name=doc["detail-type"], size=obj.get("size"), etag=obj.get("etag") or obj.get("eTag") or "",
            sequencer=obj.get("sequencer") or "", version_id=obj.get("version-id") or "",
            event_time=_time(doc.get("time")), message_id=message_id)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BadEvent(f"EventBridge event without detail.bucket.name/detail.object.key: {exc}") from None
    return Notice(action="changes", source="eventbridge", message_id=message_id, changes=[change])


def _sns(doc: dict) -> Notice:
    message_id = doc.get("MessageId")
    if not isinstance(message_id, str) or not message_id:
        raise BadEvent("SNS envelope without a MessageId")
    kind, envelope = doc["Type"], {k: v for k, v in doc.items() if isinstance(v, str)}
    if kind == "SubscriptionConfirmation":
        return Notice(action="subscribe", source="sns", message_id=message_id, envelope=envelope,
                      subscribe_url=str(doc.get("SubscribeURL") or ""))
    if kind == "UnsubscribeConfirmation":
        return Notice(action="unsubscribe", source="sns", message_id=message_id, envelope=envelope)
    try:
        message = json.loads(doc.get("Message") or "")
    except ValueError:
        raise BadEvent("the SNS Message is not JSON: is this topic fed by S3 event notifications?") from None
    if isinstance(message, dict) and message.get("Event") == "s3:TestEvent":
        return Notice(action="test", source="sns", message_id=message_id, envelope=envelope)
    if not isinstance(message, dict):
        raise BadEvent("the SNS Message is not an S3 notification object")
    return Notice(action="changes", source="sns", message_id=message_id, envelope=envelope,
                  changes=parse_records(message, message_id))


def parse_body(raw: bytes, *, message_id: str = "", eventbridge_keys_encoded: bool = True) -> Notice:
    """Recognise the format of a POST body and parse it. `message_id` names a body that carries none of its own
    (SNS raw delivery sends it as the x-amz-sns-message-id header); otherwise a hash of the body stands in, so the
    same body delivered twice is the same message."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadEvent("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise BadEvent("the body is not a JSON object")
    try:
        return _dispatch(doc, raw, message_id, eventbridge_keys_encoded)
    except BadEvent:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a field of an unexpected type
        raise BadEvent(f"malformed notification: {type(exc).__name__}: {exc}") from None


def _dispatch(doc: dict, raw: bytes, message_id: str, eventbridge_keys_encoded: bool) -> Notice:
    if isinstance(doc.get("Type"), str) and doc["Type"] in _SNS_TYPES:
        return _sns(doc)
    if doc.get("source") == "aws.s3" and isinstance(doc.get("detail-type"), str):
        return _eventbridge(doc, eventbridge_keys_encoded)
    if doc.get("Event") == "s3:TestEvent":
        return Notice(action="test", source="s3", message_id=message_id or "test")
    if "Records" in doc:
        source = "minio" if "EventName" in doc else "s3"
        message_id = message_id or f"{source}:{hashlib.sha256(raw).hexdigest()[:32]}"
        return Notice(action="changes", source=source, message_id=message_id, changes=parse_records(doc, message_id))
    raise BadEvent("not an SNS envelope, MinIO webhook, EventBridge S3 event or S3 Records document")


def newer(a: S3Change, b: S3Change) -> bool:
    """Whether change `a` of a key happened after change `b` of the same key. Sequencers are hex strings of
    varying length, comparable only for one key: right-pad with zeros, then compare as strings (AWS's rule). The
    event time orders changes without one; when nothing tells, the later arrival wins."""
    width = max(len(a.sequencer), len(b.sequencer))
    if a.sequencer and b.sequencer and a.sequencer.upper().ljust(width, "0") != b.sequencer.upper().ljust(width, "0"):
        return a.sequencer.upper().ljust(width, "0") > b.sequencer.upper().ljust(width, "0")
    if a.event_time and b.event_time and a.event_time != b.event_time:
        return a.event_time > b.event_time
    return True


def coalesce(changes: Iterable[S3Change]) -> list[S3Change]:
    """One change per (bucket, key): the latest, in first-seen order."""
    latest: dict[tuple[str, str], S3Change] = {}
    for change in changes:
        key = (change.bucket, change.key)
        if key not in latest or newer(change, latest[key]):
            latest[key] = change
    return list(latest.values())


def sns_string_to_sign(envelope: dict[str, Any]) -> bytes:
    """The canonical text SNS signs: name and value lines of a fixed field set, in this order."""
    if envelope.get("Type") == "Notification":
        fields = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        fields = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    text = "".join(f"{name}\n{envelope[name]}\n" for name in fields if name in envelope)
    return text.encode("utf-8")


class SnsVerifier:
    """Checks SNS signatures (SignatureVersion 1: SHA1, 2: SHA256) with certificates fetched only from URLs that
    match `cert_url_pattern`, each fetched once."""

    def __init__(self, fetch: Callable[[str], bytes], cert_url_pattern: str = DEFAULT_SNS_URL_PATTERN):
        self.fetch = fetch
        self.pattern = re.compile(cert_url_pattern)
        self._certs: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def certificate(self, url: str) -> x509.Certificate:
        if not self.pattern.match(url):
            raise SignatureError(f"SigningCertURL {url!r} is not an SNS certificate URL this relay trusts")
        with self._lock:
            cached = self._certs.get(url)
        if cached is not None:
            return cached
        try:
            cert = x509.load_pem_x509_certificate(self.fetch(url))
        except ValueError as exc:
            raise SignatureError(f"the certificate at {url} is not a PEM certificate: {exc}") from None
        with self._lock:
            if len(self._certs) > 64:  # SNS rotates certificates rarely; a bound keeps a flood from growing this
                self._certs.clear()
            self._certs[url] = cert
        return cert

    def verify(self, envelope: dict[str, Any]) -> None:
        version = envelope.get("SignatureVersion")
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(str(version))
        if algorithm is None:
            raise SignatureError(f"unsupported SNS SignatureVersion {version!r}")
        try:
            signature = base64.b64decode(envelope["Signature"], validate=True)
        except (KeyError, ValueError):
            raise SignatureError("the SNS message has no valid base64 Signature") from None
        cert = self.certificate(str(envelope.get("SigningCertURL") or ""))
        now = datetime.now(timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SignatureError("the SNS signing certificate is expired or not yet valid")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureError("the SNS signing certificate does not hold an RSA key")
        try:
            key.verify(signature, sns_string_to_sign(envelope), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise SignatureError("the SNS signature does not match the message") from None
