"""Upload-to-searchable time on the running platform: S3 (moto) -> SNS -> relay -> Prefect trigger -> process worker
-> standing Dask workers -> Milvus, timed per upload until a search returns the object at rank 1.

    python bench/freshness.py --uploads 24 --every 2.0

Starts its own platform (millrace.platform) on free ports under a temporary MILLRACE_HOME, and a moto server; reads
the per-document upload-to-searchable seconds the ledger records too (documents.fresh_s), for comparison."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from _util import table, write

WORDS = ["heron", "sluice", "barge", "weir", "tide", "quay", "lock", "mill", "flood", "dredger", "keeper", "silt"]


def text(i: int, tag: str) -> str:
    return (f"Logbook {tag} entry {i}: the {WORDS[i % 12]} near gauge {i * 37 % 101} read "
            f"{i * 13 % 97} centimetres while the {WORDS[(i * 5) % 12]} crew checked {WORDS[(i * 7) % 12]} {tag}{i}.")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uploads", type=int, default=24)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between uploads")
    ap.add_argument("--timeout", type=float, default=180.0, help="per upload")
    args = ap.parse_args()
    import boto3

    from millrace import platform
    from millrace.config import load_settings
    from millrace.sources import s3_uri
    from serving.retrieve import Retriever

    moto_port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{moto_port}"
    creds = dict(endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1")
    home = Path(tempfile.mkdtemp(prefix="millrace-fresh-"))
    ports = {v: str(free_port()) for v in ("MILLRACE_PREFECT_PORT", "MILLRACE_SERVER_PORT", "MILLRACE_DASK_PORT",
                                           "MILLRACE_DASK_DASHBOARD_PORT", "MILLRACE_RELAY_PORT")}
    extra = {**ports, "MILLRACE_S3_ENDPOINT_URL": endpoint, "MILLRACE_S3_KEY": "testing",
             "MILLRACE_S3_SECRET": "testing", "MILLRACE_S3_REGION": "us-east-1"}
    ep = platform.start(home, extra_env=extra)
    print(ep.describe(), flush=True)
    rows: list[dict] = []
    try:
        bucket, tag = f"fresh-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:5]
        s3, sns = boto3.client("s3", **creds), boto3.client("sns", **creds)
        s3.create_bucket(Bucket=bucket)
        topic = sns.create_topic(Name=bucket)["TopicArn"]
        token = ep.token_file.read_text().strip()
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"{ep.relay_url}/s3/events?token={token}")
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"TopicConfigurations": [
            {"TopicArn": topic, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
        retriever = Retriever(load_settings(home=ep.home, milvus_uri=ep.milvus_uri))
        done = threading.Event()
        uploaded: dict[int, float] = {}
        found: dict[int, float] = {}

        def upload_all() -> None:
            client = boto3.client("s3", **creds)
            for i in range(args.uploads):
                uploaded[i] = time.time()  # the PUT returns only after SNS delivered (moto delivers inline)
                client.put_object(Bucket=bucket, Key=f"uploads/log {tag} #{i}.txt", Body=text(i, tag).encode())
                time.sleep(args.every)
            done.set()

        threading.Thread(target=upload_all, daemon=True).start()
        deadline = time.time() + args.uploads * args.every + args.timeout
        while time.time() < deadline and len(found) < args.uploads:
            for i, t in list(uploaded.items()):
                if i in found:
                    continue
                try:
                    hits = retriever.search(text(i, tag), k=1)
                except Exception:  # the collection does not exist before the first run
                    hits = []
                if hits and hits[0].source_uri == s3_uri(bucket, f"uploads/log {tag} #{i}.txt"):
                    found[i] = time.time() - t
            time.sleep(0.25)
        from millrace import clients

        ledger = clients.ledger(load_settings(home=ep.home))
        fresh = {r["source_uri"]: r["fresh_s"] for r in ledger.rows(retriever.store.collection)}
        for i in range(args.uploads):
            uri = s3_uri(bucket, f"uploads/log {tag} #{i}.txt")
            rows.append({"upload": i, "searchable_s": round(found[i], 2) if i in found else None,
                         "ledger_fresh_s": fresh.get(uri)})
        runs = platform_runs(ep)
    finally:
        platform.stop(home)
        moto.terminate()
    times = [r["searchable_s"] for r in rows if r["searchable_s"] is not None]
    result = {"uploads": args.uploads, "every_s": args.every, "searchable": len(times),
              "p50_s": round(statistics.median(times), 2) if times else None,
              "p95_s": round(percentile(times, 0.95), 2) if times else None,
              "max_s": round(max(times), 2) if times else None, "flow_runs": runs,
              "platform_startup_s": round(ep.startup_s, 1), "per_upload": rows}
    print(table(rows, ["upload", "searchable_s", "ledger_fresh_s"]))
    print(f"{len(times)}/{args.uploads} searchable; p50 {result['p50_s']} s, p95 {result['p95_s']} s, "
          f"{runs} s3-object runs")
    write("freshness", result)


def platform_runs(ep) -> int:
    import httpx

    deps = httpx.post(f"{ep.api_url}/deployments/filter", json={}, timeout=10).json()
    ids = [d["id"] for d in deps if d["name"] == "s3-object"]
    body = {"deployments": {"id": {"any_": ids}}, "limit": 200}
    return len(httpx.post(f"{ep.api_url}/flow_runs/filter", json=body, timeout=10).json())


if __name__ == "__main__":
    main()
