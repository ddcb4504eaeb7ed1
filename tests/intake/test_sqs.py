"""S3 -> SQS -> change queue against moto's real server: a bucket notifies a queue, intake.sqs consumes it, and
what the change queue holds, what SQS still holds and what the DLQ received are checked through the real APIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import boto3
import httpx
import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from intake.emit import WAKE_EVENT, PrefectEmitter
from intake.sqs import PollResult, SqsIntake
from millrace import clients
from millrace.config import Settings
from millrace.events import queue as changequeue
from millrace.events.queue import Entry
from millrace.events.s3 import parse_body
from millrace.events.sqs_dlq import forward_dead, object_location, records_document, sqs_client
from millrace.sources.base import route_keys
from millrace.uris import canonical_source_uri
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

MESSY = ["docs/a b.txt", "docs/café/naïve résumé.pdf", "docs/sub/folder/x#1+2=3.txt", "docs/100% sure?&.md",
         "docs/deep/er/ü ö/€ & ¥.docx"]


@pytest.fixture()
def aws(moto_s3, monkeypatch):
    """Standard AWS variables aimed at the moto server: the consumer finds SQS through AWS_ENDPOINT_URL_SQS."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_SQS": moto_s3}.items():
        monkeypatch.setenv(key, value)
    return boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")


@pytest.fixture()
def world(aws, tmp_path):
    """A bucket, a queue and a DLQ named for this test; settings whose source is the bucket's docs/ prefix."""
    name = f"sqs-{uuid.uuid4().hex[:8]}"
    sqs = boto3.client("sqs", region_name="us-east-1")
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    aws.create_bucket(Bucket=name)
    cfg = Settings(home=tmp_path / "home", collection=f"c_{name[4:]}", sources=[f"s3://{name}/docs"],
                   sqs_queue_url=queue, sqs_dlq_url=dlq, sqs_max_receives=3, sqs_wait_s=0, sqs_visibility_s=1,
                   sqs_wake_every_s=0, retry_delays=[0.1])
    return dict(s3=aws, sqs=sqs, bucket=name, queue=queue, dlq=dlq, settings=cfg)


def notify(world) -> None:
    arn = world["sqs"].get_queue_attributes(QueueUrl=world["queue"], AttributeNames=["QueueArn"])
    world["s3"].put_bucket_notification_configuration(Bucket=world["bucket"], NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn["Attributes"]["QueueArn"],
                                 "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})


def in_queue(sqs, url: str) -> int:
    """Messages in a queue, visible or in flight."""
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def drain(intake: SqsIntake) -> PollResult:
    total = PollResult()
    while (r := intake.poll_once()).received:
        for field in PollResult.model_fields:
            setattr(total, field, getattr(total, field) + getattr(r, field))
    return total


def pending(cfg: Settings) -> dict[str, Entry]:
    return {e.object: e for e in clients.change_queue(cfg).entries(cfg.collection, state="pending", limit=1000)}


def dlq_messages(world) -> list[dict]:
    return world["sqs"].receive_message(QueueUrl=world["dlq"], MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                        MessageAttributeNames=["All"]).get("Messages", [])


def wake_events(api: str, collection: str) -> list[dict]:
    page = httpx.post(f"{api}/events/filter", timeout=30, json={
        "filter": {"resource": {"id": [f"millrace.collection.{collection}"]}, "order": "ASC"}, "limit": 50})
    page.raise_for_status()
    return page.json()["events"]


def test_uploads_become_changes_with_decoded_keys_and_are_deleted_after(world, prefect_api):
    notify(world)  # moto, like S3, sends an s3:TestEvent to the queue first
    s3, bucket, cfg = world["s3"], world["bucket"], world["settings"]
    for key in MESSY + ["other/outside.txt", "docs/folder/"]:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    intake = SqsIntake(cfg, sqs_client(cfg), PrefectEmitter(prefect_api))
    result = drain(intake)
    assert result.received == len(MESSY) + 3 and result.deleted == result.received
    assert result.queued == len(MESSY) and result.poison == result.dead_lettered == 0
    found = pending(cfg)
    assert sorted(found) == sorted(k.removeprefix("docs/") for k in MESSY)
    assert {e.source for e in found.values()} == {canonical_source_uri(f"s3://{bucket}/docs")}
    assert all(e.origin.startswith("sqs:") and e.kind == "created" for e in found.values())
    assert all(object_location(e) == (bucket, f"docs/{rel}") for rel, e in found.items())
    assert in_queue(world["sqs"], world["queue"]) == 0
    deadline = time.monotonic() + 30
    while not (woken := wake_events(prefect_api, cfg.collection)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert woken and {e["event"] for e in woken} == {WAKE_EVENT}
    assert sum(e["payload"]["changes"] for e in woken) == len(MESSY)

    s3.delete_object(Bucket=bucket, Key=MESSY[1])
    intake.emitter = PrefectEmitter("http://127.0.0.1:9/api", retry_delays=[0.1])  # a failed wake-up is not fatal
    assert drain(intake).queued == 1
    assert pending(cfg)[MESSY[1].removeprefix("docs/")].kind == "removed"


def test_a_stream_wakes_the_drain_at_its_pace_and_every_change_is_announced(world, prefect_api):
    """One receive per upload would be one wake-up per upload, each a flow run for CANCEL_NEW to cancel while no
    drain runs yet. Paced, wake-ups are at least sqs_wake_every_s apart, and the changes held back go out with a
    later one."""
    notify(world)
    s3, bucket = world["s3"], world["bucket"]
    cfg = world["settings"].model_copy(update={"sqs_wake_every_s": 1.5})
    intake = SqsIntake(cfg, sqs_client(cfg), PrefectEmitter(prefect_api))
    uploads = [f"docs/stream {i} é#.txt" for i in range(30)]
    started = time.monotonic()
    for key in uploads:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
        intake.poll_once()
    while intake.owed:  # the last changes wait for the pace, then a poll finding nothing announces them
        time.sleep(0.2)
        intake.poll_once()
    elapsed = time.monotonic() - started
    assert sorted(pending(cfg)) == sorted(k.removeprefix("docs/") for k in uploads)
    deadline = time.monotonic() + 30
    woken = wake_events(prefect_api, cfg.collection)
    while sum(e["payload"]["changes"] for e in woken) < len(uploads) and time.monotonic() < deadline:
        time.sleep(0.5)
        woken = wake_events(prefect_api, cfg.collection)
    assert sum(e["payload"]["changes"] for e in woken) == len(uploads)
    assert 2 <= len(woken) <= 1 + elapsed / cfg.sqs_wake_every_s


def test_a_message_stays_in_sqs_until_the_change_queue_has_its_changes(world):
    notify(world)
    cfg, sqs = world["settings"], world["sqs"]
    intake = SqsIntake(cfg, sqs_client(cfg))
    drain(intake)  # the test event
    queue = clients.change_queue(cfg)
    changequeue.changes.drop(queue.engine)  # every write now fails
    world["s3"].put_object(Bucket=world["bucket"], Key="docs/kept.txt", Body=b"x")
    failed = intake.poll_once()
    assert (failed.received, failed.queued, failed.deleted, failed.poison) == (1, 0, 0, 1)
    time.sleep(1.5)  # the visibility timeout (1 s) ends: SQS offers it again
    assert in_queue(sqs, world["queue"]) == 1
    changequeue.meta.create_all(queue.engine)
    again = intake.poll_once()
    assert (again.received, again.queued, again.deleted) == (1, 1, 1)
    assert list(pending(cfg)) == ["kept.txt"] and in_queue(sqs, world["queue"]) == 0


def test_a_poison_message_goes_to_the_dlq_with_its_reason_after_max_receives(world):
    cfg, sqs = world["settings"], world["sqs"]
    sqs.send_message(QueueUrl=world["queue"], MessageBody="{not json")
    intake = SqsIntake(cfg, sqs_client(cfg))
    for receive in range(1, cfg.sqs_max_receives):
        assert intake.poll_once().poison == 1, f"receive {receive}"
        assert dlq_messages(world) == []
        time.sleep(1.2)
    last = intake.poll_once()
    assert (last.dead_lettered, last.poison, last.deleted) == (1, 0, 0)  # deleted counts committed ones
    [dead] = dlq_messages(world)
    assert dead["Body"] == "{not json"
    assert dead["MessageAttributes"]["reason"]["StringValue"] == "bad-event"
    assert dead["MessageAttributes"]["receive_count"]["StringValue"] == str(cfg.sqs_max_receives)
    assert "not JSON" in dead["MessageAttributes"]["detail"]["StringValue"]
    assert in_queue(sqs, world["queue"]) == 0


def test_without_a_dlq_a_spent_poison_message_stays(world):
    cfg = world["settings"].model_copy(update={"sqs_dlq_url": "", "sqs_max_receives": 1})
    world["sqs"].send_message(QueueUrl=world["queue"], MessageBody=json.dumps({"Records": [{"eventName": 7}]}))
    result = SqsIntake(cfg, sqs_client(cfg)).poll_once()
    assert (result.poison, result.dead_lettered, result.deleted) == (1, 0, 0)
    assert in_queue(world["sqs"], world["queue"]) == 1


def test_forward_dead_sends_an_object_that_keeps_failing_to_the_dlq_and_a_redrive_revives_it(world):
    cfg, bucket = world["settings"], world["bucket"]
    world["sqs"].send_message(QueueUrl=world["queue"],
                              MessageBody=json.dumps(records_document(bucket, "docs/sub/bad #1 é.pdf", size=3)))
    intake = SqsIntake(cfg, sqs_client(cfg))
    assert intake.poll_once().queued == 1
    queue = clients.change_queue(cfg)
    [entry] = queue.take(cfg.collection)
    assert queue.retry(entry, "timeout", "tika took too long " * 200, time.time(), max_attempts=1)
    [dead] = queue.entries(cfg.collection, state="dead")

    assert forward_dead(cfg.model_copy(update={"sqs_dlq_url": ""}), [dead]) == 0
    assert forward_dead(cfg, [dead]) == 1
    [message] = dlq_messages(world)
    attrs = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    assert attrs["reason"] == "timeout" and attrs["attempts"] == "1" and attrs["origin"] == entry.origin
    assert attrs["detail"].startswith("tika took too long") and len(attrs["detail"]) <= 1000
    [change] = parse_body(message["Body"].encode()).changes
    assert (change.bucket, change.key, change.size) == (bucket, "docs/sub/bad #1 é.pdf", 3)

    # Redriving the DLQ message into the source queue queues the object again.
    world["sqs"].send_message(QueueUrl=world["queue"], MessageBody=message["Body"])
    assert intake.poll_once().queued == 1
    assert pending(cfg)["sub/bad #1 é.pdf"].state == "pending"


def test_an_unreachable_sqs_fails_loudly_after_the_retries(world):
    from intake.sqs import SqsUnavailable

    cfg = world["settings"]
    intake = SqsIntake(cfg, sqs_client(cfg, endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(SqsUnavailable, match="AWS_ENDPOINT_URL_SQS"):
        intake.poll_once()
    stop = threading.Event()
    with pytest.raises(SqsUnavailable, match="AWS_ENDPOINT_URL_SQS"):  # from a poller thread, ending them all
        SqsIntake(cfg.model_copy(update={"sqs_receivers": 3}), intake.client).run(stop)
    assert stop.is_set()


def test_concurrent_pollers_queue_every_change_once_and_empty_sqs(world):
    """Several pollers take a burst in parallel, with an overwrite and a deletion among it: the change queue ends
    with each object's latest change, whichever poller got which message, and SQS ends empty."""
    notify(world)
    s3, bucket = world["s3"], world["bucket"]
    cfg = world["settings"].model_copy(update={"sqs_receivers": 3})
    uploads = [f"docs/burst {i} {name}" for i in range(12) for name in ("é+#.txt", "a b.md")]
    for key in uploads:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    time.sleep(0.01)  # moto's notifications have no sequencer: their event times (ms) must order the changes
    s3.put_object(Bucket=bucket, Key=uploads[0], Body=b"overwritten")
    s3.delete_object(Bucket=bucket, Key=uploads[1])
    stop = threading.Event()
    poller = threading.Thread(target=SqsIntake(cfg, sqs_client(cfg)).run, args=(stop,))
    poller.start()
    try:
        deadline = time.monotonic() + 60
        while (in_queue(world["sqs"], world["queue"]) or len(pending(cfg)) < len(uploads)) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len([t for t in threading.enumerate() if t.name.startswith("sqs-poll-")]) == cfg.sqs_receivers
    finally:
        stop.set()
        poller.join(30)
    assert not poller.is_alive()
    found = pending(cfg)
    assert sorted(found) == sorted(k.removeprefix("docs/") for k in uploads)
    assert found[uploads[1].removeprefix("docs/")].kind == "removed"
    assert {e.kind for k, e in found.items() if k != uploads[1].removeprefix("docs/")} == {"created"}
    assert in_queue(world["sqs"], world["queue"]) == 0


def test_a_steady_stream_gathers_into_full_receives_and_every_change_is_queued(world):
    """A long poll returns as soon as one message is there, so a stream read as it comes is one receive, one delete
    and one change-queue commit per upload. After a short receive the poller lets the batching window pass: the
    first upload goes at once, the rest arrive in receives of up to ten."""
    notify(world)
    s3, bucket = world["s3"], world["bucket"]
    cfg = world["settings"].model_copy(update={"sqs_receivers": 1, "sqs_wait_s": 1, "sqs_batch_window_s": 1.0,
                                                "sqs_visibility_s": 60})  # no redelivery on a slow machine
    client = sqs_client(cfg)
    sizes: list[int] = []
    receive = client.receive_message

    def counted(**kwargs):
        answer = receive(**kwargs)
        sizes.append(len(answer.get("Messages", [])))
        return answer

    client.receive_message = counted
    stop = threading.Event()
    poller = threading.Thread(target=SqsIntake(cfg, client).run, args=(stop,))
    poller.start()
    uploads = [f"docs/stream {i} ü+#.txt" for i in range(40)]
    try:
        for key in uploads:
            s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
        deadline = time.monotonic() + 60
        while (in_queue(world["sqs"], world["queue"]) or len(pending(cfg)) < len(uploads)) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        poller.join(30)
    assert sorted(pending(cfg)) == sorted(k.removeprefix("docs/") for k in uploads)
    assert in_queue(world["sqs"], world["queue"]) == 0
    nonempty = [n for n in sizes if n]
    assert sum(nonempty) == len(uploads) + 1  # and S3's test event
    assert len(nonempty) <= 10, sizes


keys = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda k: not k.endswith("/"))


@given(prefix=st.sampled_from(["", "docs", "a b/c+d"]), rest=keys)
@hsettings(max_examples=200, deadline=None)
def test_keys_survive_the_notification_the_routing_and_the_dlq_document(prefix, rest):
    bucket = "b"
    key = f"{prefix}/{rest}" if prefix else rest
    [change] = parse_body(json.dumps(records_document(bucket, key)).encode()).changes
    assert change.key == key
    routed = route_keys(bucket, [key], [f"s3://{bucket}/{prefix}"] if prefix else [])
    [(source, [rel])] = routed.items()
    entry = Entry(collection="c", source=source, object=rel, version=1, enqueued_at=0.0)
    assert object_location(entry) == (bucket, key)


def test_the_command_polls_once_from_the_standard_environment(world, tmp_path):
    cfg = world["settings"]
    world["sqs"].send_message(QueueUrl=world["queue"],
                              MessageBody=json.dumps(records_document(world["bucket"], "docs/cli one.txt")))
    env = {**os.environ, "MILLRACE_HOME": str(cfg.home), "MILLRACE_COLLECTION": cfg.collection,
           "MILLRACE_SOURCES": json.dumps(cfg.sources), "MILLRACE_SQS_QUEUE_URL": cfg.sqs_queue_url}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "intake.sqs", "--once"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'queued': 1" in done.stderr
    assert list(pending(cfg)) == ["cli one.txt"]
    env.pop("MILLRACE_SQS_QUEUE_URL")
    refused = subprocess.run([sys.executable, "-m", "intake.sqs", "--once"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "MILLRACE_SQS_QUEUE_URL" in refused.stderr
