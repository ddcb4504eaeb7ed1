"""S3 events end to end on the platform: moto S3 bucket notification -> SNS topic -> SNS HTTP subscription to the
relay -> the change queue, and a wake-up event -> the `drain` deployment's trigger -> a draining run on the process
worker -> Milvus. A burst of uploads ends in few runs, whatever the number of wake-ups."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import httpx
import pytest

from tests.deployments.conftest import TERMINAL

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DOCS = {
    "field notes/heron survey.txt": "The spring heron survey counted forty-two grey herons nesting above Ashford weir.",
    "field notes/sluice gate.txt": "Sluice gate three at Millbrook is wound open by the lock keeper after a flood warning.",
    "field notes/barge schedule.txt": "The silt barge leaves Bergen quay for the dredger every Tuesday at dawn.",
}
LOGS = ("relay", "prefect", "prefect-worker", "dask-workers")


class Capture(ThreadingHTTPServer):
    """A second SNS subscriber: receives the very envelopes SNS delivers to the relay (same MessageId)."""

    def __init__(self):
        self.bodies: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler):  # noqa: N805
                self.bodies.append(json.loads(handler.rfile.read(int(handler.headers["Content-Length"]))))
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@pytest.fixture()
def capture():
    server = Capture()
    yield server
    server.shutdown()
    server.server_close()


def aws(kind: str, endpoint: str):
    return boto3.client(kind, endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                        region_name="us-east-1")


def top_sources(retriever, text: str) -> list[str]:
    return [h.source_uri for h in retriever.search(text, k=5)]


def subscribe_relay(platform, moto_s3, capture=None) -> tuple[str, object]:
    """A bucket whose notifications go through SNS to the relay (and to `capture`); returns its name and client."""
    relay, token = platform.ep.relay_url, platform.ep.token_file.read_text().strip()
    bucket = f"inbox-{uuid.uuid4().hex[:8]}"
    s3, sns = aws("s3", moto_s3), aws("sns", moto_s3)
    s3.create_bucket(Bucket=bucket)
    topic = sns.create_topic(Name=bucket)["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"{relay}/s3/events?token={token}")
    if capture is not None:
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=capture.url)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"TopicConfigurations": [
        {"TopicArn": topic, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    return bucket, s3


def drains_done(platform):
    """The drain runs once none is running or waiting (CANCELLED ones are wake-ups that found a run draining)."""
    found = platform.runs_of("drain/drain")
    return found if all(r["state_type"] in TERMINAL | {"SCHEDULED"} for r in found) else None


def queue_pending(platform) -> int:
    from millrace import clients
    from millrace.config import load_settings

    settings = load_settings(home=platform.ep.home)
    return clients.change_queue(settings).stats(settings.collection).pending


def worked(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r["state_type"] != "SCHEDULED" and r["state_type"] != "CANCELLED"]


def test_uploads_and_a_deletion_reach_the_index_through_sns_and_the_relay(platform, moto_s3, capture):
    from millrace.config import load_settings
    from millrace.uris import s3_uri
    from millrace.search import Retriever

    relay, token = platform.ep.relay_url, platform.ep.token_file.read_text().strip()
    bucket, s3 = subscribe_relay(platform, moto_s3, capture)

    def put(item: tuple[str, str]) -> None:
        aws("s3", moto_s3).put_object(Bucket=bucket, Key=item[0], Body=item[1].encode())

    with ThreadPoolExecutor(len(DOCS)) as pool:
        list(pool.map(put, DOCS.items()))

    retriever = Retriever(load_settings(home=platform.ep.home, milvus_uri=platform.ep.milvus_uri,
                                        search_consistency="Strong"))
    for key, text in DOCS.items():
        platform.wait(f"{key} to be searchable",
                      lambda key=key, text=text: s3_uri(bucket, key) in top_sources(retriever, text)[:1], 300, LOGS)
    # A round commits (searchable) before it settles the queue: the entries go a moment later.
    platform.wait("the queue to empty", lambda: queue_pending(platform) == 0, 60, LOGS)
    runs = platform.wait("the drain runs to finish", lambda: drains_done(platform), 120, LOGS)
    assert all(r["state_type"] in ("COMPLETED", "CANCELLED", "SCHEDULED") for r in runs), \
        [(r["name"], r["state_type"]) for r in runs]

    # A request without the token (or with a wrong one) is refused.
    envelope = next(b for b in capture.bodies if b.get("Type") == "Notification" and "ObjectCreated" in b["Message"])
    for params in ({}, {"token": "not-the-token-" + "x" * 20}):
        refused = httpx.post(f"{relay}/s3/events", params=params, content=json.dumps(envelope),
                             headers={"Content-Type": "text/plain; charset=UTF-8"})
        assert refused.status_code == 401, refused.text + platform.tail("relay")

    # SNS redelivers on timeouts: an envelope delivered before changes nothing.
    again = httpx.post(f"{relay}/s3/events", params={"token": token}, content=json.dumps(envelope),
                       headers={"Content-Type": "text/plain; charset=UTF-8",
                                "x-amz-sns-message-id": envelope["MessageId"]}, timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "duplicate", again.text + platform.tail("relay")
    assert queue_pending(platform) == 0

    # A deletion removes that object, and only it, from the index.
    gone, kept = list(DOCS)[1], list(DOCS)[0]
    s3.delete_object(Bucket=bucket, Key=gone)
    platform.wait("the deletion to leave the index",
                  lambda: s3_uri(bucket, gone) not in top_sources(retriever, DOCS[gone]), 300, LOGS)
    assert top_sources(retriever, DOCS[kept])[0] == s3_uri(bucket, kept)


def test_a_burst_of_uploads_while_a_drain_runs_ends_in_few_runs_all_searchable(platform, moto_s3):
    from millrace import clients
    from millrace.config import load_settings
    from millrace.uris import s3_uri
    from millrace.search import Retriever

    bucket, s3 = subscribe_relay(platform, moto_s3)
    platform.wait("earlier drains to finish", lambda: drains_done(platform), 180, LOGS)
    before = {r["id"] for r in platform.runs_of("drain/drain")}
    s3.put_object(Bucket=bucket, Key="first.txt", Body=b"The first upload opens the draining run for the burst.")
    platform.wait("a drain to start", lambda: any(r["state_type"] == "RUNNING" for r in platform.runs_of(
        "drain/drain")), 120, LOGS)
    texts = {f"burst/report {i:03d} #{i % 7}.txt": f"Burst report {i} logs {i * 37 % 101} eels passing fish ladder "
                                                    f"{i % 13} at the {['upper', 'lower'][i % 2]} weir." for i in range(200)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: aws("s3", moto_s3).put_object(Bucket=bucket, Key=kv[0], Body=kv[1].encode()),
                      texts.items()))

    settings = load_settings(home=platform.ep.home)
    ledger = clients.ledger(settings)

    def all_indexed() -> bool:
        rows = {r["source_uri"] for r in ledger.rows(settings.collection, ["indexed"])}
        return {s3_uri(bucket, k) for k in texts} <= rows

    platform.wait("all 200 uploads to be indexed", all_indexed, 600, LOGS, every=2)
    runs = platform.wait("the drain runs to finish", lambda: drains_done(platform), 180, LOGS)
    new = [r for r in worked(runs) if r["id"] not in before]
    # One run drains the burst; a sweep or a wake-up at the moment a run ends may add one or two.
    assert 1 <= len(new) <= 3, [(r["name"], r["state_type"]) for r in new]
    assert all(r["state_type"] == "COMPLETED" for r in new), [(r["name"], r["state_type"]) for r in new]
    assert queue_pending(platform) == 0
    retriever = Retriever(load_settings(home=platform.ep.home, milvus_uri=platform.ep.milvus_uri,
                                        search_consistency="Strong"))
    for key in list(texts)[::40]:
        assert top_sources(retriever, texts[key])[0] == s3_uri(bucket, key)
