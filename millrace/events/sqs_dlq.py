"""The SQS side of S3 -> SQS notifications that the core needs: the boto3 client, and the dead-letter queue that
objects which keep failing are forwarded to.

A change that arrived by SQS (origin `sqs:<message id>`) was deleted from its queue as soon as the change queue
held it, so when its object is later set aside as dead (millrace.events.queue) nothing is left in SQS to show for it.
`forward_dead` puts it back where the operators of an SQS pipeline look for failures: one DLQ message per object,
an S3 `Records` document that a redrive to the source queue feeds through the consumer again, with the reason in
its message attributes."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from typing import Any, Iterable
from urllib.parse import quote_plus

from millrace.config import Settings
from millrace.events.queue import Entry
from millrace.retry import with_retries
from millrace.uris import s3_location

log = logging.getLogger("millrace")

SQS_BATCH = 10  # SQS takes at most ten entries per batch call
DETAIL_CHARS = 1000  # keeps a DLQ message readable in the console, far below SQS's 256 KiB
# What SQS accepts in a body or a String attribute (XML 1.0 characters); anything else is refused with a 400.
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_QUEUE_REGION = (re.compile(r"^https?://sqs[.-]([a-z0-9-]+)\.amazonaws\.com"),
                 re.compile(r"^https?://([a-z0-9-]+)\.queue\.amazonaws\.com"))


def queue_region(url: str) -> str | None:
    """The region an AWS queue URL names (`https://sqs.eu-west-1.amazonaws.com/...`), None for other endpoints."""
    for pattern in _QUEUE_REGION:
        match = pattern.match(url or "")
        if match:
            return match.group(1)
    return None


def sqs_client(settings: Settings, endpoint_url: str | None = None):
    """A boto3 SQS client from the standard AWS chain; botocore does not retry (millrace.retry does)."""
    import boto3
    from botocore.config import Config

    # An explicit AWS region wins; without one the queue URL says where the queue is, so a bare
    # MILLRACE_SQS_QUEUE_URL is enough (boto3 refuses to build a client with no region at all).
    session = boto3.session.Session()
    region = (session.region_name or queue_region(settings.sqs_queue_url) or queue_region(settings.sqs_dlq_url)
              or settings.s3_region or "us-east-1")
    # endpoint_url=None lets boto3 apply AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL itself.
    return session.client("sqs", region_name=region, endpoint_url=endpoint_url or None,
                          config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))


def attribute(value: Any) -> dict[str, str] | None:
    """A message attribute for `value` (a Number for ints); None for an empty value, which SQS refuses."""
    if isinstance(value, bool) or not isinstance(value, int):
        text = _NOT_XML.sub("?", str(value or ""))
        return {"DataType": "String", "StringValue": text} if text else None
    return {"DataType": "Number", "StringValue": str(value)}


def attributes(**values: Any) -> dict[str, dict[str, str]]:
    return {name: attr for name, value in values.items() if (attr := attribute(value)) is not None}


def object_location(entry: Entry) -> tuple[str, str]:
    """(bucket, key) of an entry of an s3:// source: its source's prefix joined with its decoded path."""
    bucket, prefix = s3_location(entry.source)
    return bucket, f"{prefix}/{entry.object}" if prefix else entry.object


def records_document(bucket: str, key: str, kind: str = "created", size: int | None = None, sequencer: str = "",
                     event_time: datetime | None = None) -> dict:
    """A minimal S3 notification (`Records`) for one object, its key encoded the way S3 encodes it."""
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/")}
    if size is not None:
        obj["size"] = size
    if sequencer:
        obj["sequencer"] = sequencer
    when = (event_time or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3",
        "eventTime": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventName": "ObjectCreated:Put" if kind == "created" else "ObjectRemoved:Delete",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": obj}}]}


def send_batch(client, queue_url: str, entries: list[dict], delays: list[float], what: str) -> list[str]:
    """send_message_batch in chunks of ten, each retried on transient failures; the Ids SQS took."""
    sent: list[str] = []
    for start in range(0, len(entries), SQS_BATCH):
        chunk = entries[start:start + SQS_BATCH]
        answer = with_retries(lambda: client.send_message_batch(QueueUrl=queue_url, Entries=chunk), delays, what)
        sent += [ok["Id"] for ok in answer.get("Successful", [])]
        for failed in answer.get("Failed", []):
            log.warning("%s: SQS refused entry %s: %s %s", what, failed.get("Id"), failed.get("Code"),
                        failed.get("Message"))
    return sent


def forward_dead(settings: Settings, entries: Iterable[Entry], client=None) -> int:
    """Send each dead entry of an s3:// source to the DLQ as an S3 `Records` message; how many were sent."""
    if not settings.sqs_dlq_url:
        return 0
    batch = []
    for entry in entries:
        if not entry.source.startswith("s3://"):  # only S3 objects can be redriven through the consumer
            log.warning("not forwarding dead entry %s/%s to the DLQ: not an s3:// source", entry.source, entry.object)
            continue
        bucket, key = object_location(entry)
        body = records_document(bucket, key, entry.kind, entry.size, entry.sequencer, entry.event_time)
        batch.append({"Id": str(len(batch)), "MessageBody": json.dumps(body),
                      "MessageAttributes": attributes(reason=entry.reason or "failed",
                                                      detail=entry.detail[:DETAIL_CHARS],
                                                      attempts=entry.attempts, origin=entry.origin)})
    if not batch:
        return 0
    client = client or sqs_client(settings)
    # Raises once the retries are spent: the entries stay dead in the change queue (`millrace status` lists them),
    # so the caller logs it and goes on.
    sent = send_batch(client, settings.sqs_dlq_url, batch, settings.retry_delays,
                      f"forwarding {len(batch)} dead objects to the DLQ {settings.sqs_dlq_url}")
    log.info("forwarded %d dead objects to the DLQ %s", len(sent), settings.sqs_dlq_url)
    return len(sent)
