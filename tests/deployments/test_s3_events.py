"""S3 events end to end on the platform: moto S3 bucket notification -> SNS topic -> SNS HTTP subscription to the
relay -> Prefect event -> the `s3-object` deployment's trigger -> a run on the process worker -> Milvus."""

from __future__ import annotations

import json
import threading
import time
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


def test_uploads_and_a_deletion_reach_the_index_through_sns_and_the_relay(platform, moto_s3, capture):
    from millrace.config import load_settings
    from millrace.sources import s3_uri
    from serving.retrieve import Retriever

    relay, token = platform.ep.relay_url, platform.ep.token_file.read_text().strip()
    bucket = f"inbox-{uuid.uuid4().hex[:8]}"
    s3, sns = aws("s3", moto_s3), aws("sns", moto_s3)
    s3.create_bucket(Bucket=bucket)
    topic = sns.create_topic(Name=bucket)["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"{relay}/s3/events?token={token}")
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=capture.url)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"TopicConfigurations": [
        {"TopicArn": topic, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    before = {r["id"] for r in platform.runs_of("s3-object/s3-object")}

    # moto delivers to SNS subscribers synchronously inside the PUT, so uploads in one thread would each wait out
    # the relay's quiet period; concurrent uploads are the burst the relay batches, as real SNS delivers them.
    def put(item: tuple[str, str]) -> None:
        aws("s3", moto_s3).put_object(Bucket=bucket, Key=item[0], Body=item[1].encode())

    with ThreadPoolExecutor(len(DOCS)) as pool:
        list(pool.map(put, DOCS.items()))

    retriever = Retriever(load_settings(home=platform.ep.home, milvus_uri=platform.ep.milvus_uri,
                                        search_consistency="Strong"))
    for key, text in DOCS.items():
        platform.wait(f"{key} to be searchable",
                      lambda key=key, text=text: s3_uri(bucket, key) in top_sources(retriever, text)[:1], 300, LOGS)

    def finished() -> list[dict] | None:
        found = platform.runs_of("s3-object/s3-object")
        return found if all(r["state_type"] in TERMINAL for r in found) else None

    runs = platform.wait("the s3-object runs to finish", finished, 120, LOGS)
    new = [r for r in runs if r["id"] not in before]
    assert all(r["state_type"] == "COMPLETED" for r in runs), [(r["name"], r["state_type"]) for r in runs]
    assert 1 <= len(new) < len(DOCS), [r["name"] for r in new]

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
    time.sleep(10)  # the relay's quiet period, the trigger, and the worker's poll, with room to spare
    assert len(platform.runs_of("s3-object/s3-object")) == len(runs), "a redelivered envelope started a run" + \
        platform.tail("relay")

    # A deletion removes that object, and only it, from the index.
    gone, kept = list(DOCS)[1], list(DOCS)[0]
    s3.delete_object(Bucket=bucket, Key=gone)
    platform.wait("a run for the deletion", lambda: len(platform.runs_of("s3-object/s3-object")) > len(runs), 60,
                  LOGS)
    [latest] = [r for r in platform.runs_of("s3-object/s3-object") if r["id"] not in {x["id"] for x in runs}]
    assert platform.wait_run(latest["id"], 300)["parameters"]["removed"] == [gone]
    assert s3_uri(bucket, gone) not in top_sources(retriever, DOCS[gone])
    assert top_sources(retriever, DOCS[kept])[0] == s3_uri(bucket, kept)
