"""The running platform for bench/freshness.py and bench/soak.py: a moto S3 server, the whole platform
(millrace.platform.control) on free ports under a temporary MILLRACE_HOME, a bucket whose notifications reach the relay, and a
stream of uploads each timed until a search returns it at rank 1.

Only one Milvus standalone fits on a machine (its etcd binds 2379/2380 whatever port Milvus itself gets), so start()
first waits for those ports, and aborts with a message naming them rather than failing deep inside the platform."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

WORDS = ["heron", "sluice", "barge", "weir", "tide", "quay", "lock", "mill", "flood", "dredger", "keeper", "silt"]
ETCD_PORTS = (2379, 2380)
# How the bucket's notifications reach the change queue: S3 -> SNS -> the platform's relay (HTTP, one POST per
# change), or S3 -> SQS -> `python -m intake.sqs` (long polls of up to ten messages), the common AWS wiring.
WIRINGS = ("relay", "sqs")


def text(i: int, tag: str) -> str:
    return (f"Logbook {tag} entry {i}: the {WORDS[i % 12]} near gauge {i * 37 % 101} read "
            f"{i * 13 % 97} centimetres while the {WORDS[(i * 5) % 12]} crew checked {WORDS[(i * 7) % 12]} {tag}{i}.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def wait_for_etcd_ports(wait_s: float, say: Callable[[str], None] = print) -> None:
    """Return once 2379/2380 are free; SystemExit after `wait_s` (another Milvus standalone, e.g. a test suite's)."""
    from millrace.platform import procs

    deadline, told = time.monotonic() + wait_s, False
    while taken := [p for p in ETCD_PORTS if procs.port_taken(p)]:
        if time.monotonic() > deadline:
            raise SystemExit(f"ports {taken} are still taken after {wait_s:.0f} s: another Milvus standalone (its "
                             "etcd) runs on this machine, and only one fits. Stop it (`make stop`, or wait for the "
                             "test suite holding it) and run again.")
        if not told:
            say(f"ports {taken} taken (another Milvus standalone's etcd): waiting up to {wait_s:.0f} s ...")
            told = True
        time.sleep(10)


class Platform:
    """`with Platform() as p:` starts moto, the platform and the bucket wiring; leaving stops all of it, on errors too."""

    def __init__(self, wait_ports_s: float = 600, wiring: str = "relay"):
        if wiring not in WIRINGS:
            raise ValueError(f"wiring {wiring!r}: one of {', '.join(WIRINGS)}")
        self.wait_ports_s, self.wiring, self.moto, self.home, self.ep = wait_ports_s, wiring, None, None, None
        self.sqs_intake: subprocess.Popen | None = None

    def __enter__(self) -> "Platform":
        from millrace.platform import control as platform
        from millrace.platform.services import PORTS

        wait_for_etcd_ports(self.wait_ports_s)
        moto_port = free_port()
        self.moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                      str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{moto_port}"
        self.creds = dict(endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        self.home = Path(tempfile.mkdtemp(prefix="millrace-bench-platform-"))
        # Every service on a free port: a developer's `make server` or another benchmark may hold the defaults.
        extra = {var: str(free_port()) for var, _ in PORTS.values()}
        extra |= {"MILLRACE_S3_ENDPOINT_URL": endpoint, "MILLRACE_S3_KEY": "testing",
                  "MILLRACE_S3_SECRET": "testing", "MILLRACE_S3_REGION": "us-east-1"}
        try:
            self.ep = platform.start(self.home, extra_env=extra)
            print(self.ep.describe(), flush=True)
            self._wire()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wire(self) -> None:
        import boto3

        from millrace.config import load_settings
        from millrace.search import Retriever

        self.bucket, self.tag = f"bench-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:5]
        s3 = boto3.client("s3", **self.creds)
        s3.create_bucket(Bucket=self.bucket)
        events = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
        if self.wiring == "sqs":
            self._sqs = sqs = boto3.client("sqs", **self.creds)  # kept for in_flight()
            self.queue_url = sqs.create_queue(QueueName=self.bucket)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
            s3.put_bucket_notification_configuration(Bucket=self.bucket, NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn["Attributes"]["QueueArn"], "Events": events}]})
            self._log = open(self.ep.log("sqs-intake"), "ab")  # closed when the consumer is stopped
            self.sqs_intake = subprocess.Popen(
                [sys.executable, "-m", "intake.sqs", "--endpoint-url", self.creds["endpoint_url"]],
                env={**self.cli_env(), "MILLRACE_SQS_QUEUE_URL": self.queue_url, "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"},
                cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=self._log)
        else:
            sns = boto3.client("sns", **self.creds)
            topic = sns.create_topic(Name=self.bucket)["TopicArn"]
            token = self.ep.token_file.read_text().strip()
            sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"{self.ep.relay_url}/s3/events?token={token}")
            s3.put_bucket_notification_configuration(Bucket=self.bucket, NotificationConfiguration={
                "TopicConfigurations": [{"TopicArn": topic, "Events": events}]})
        self.retriever = Retriever(load_settings(home=self.ep.home, milvus_uri=self.ep.milvus_uri))

    def __exit__(self, *exc) -> None:
        from millrace.platform import control as platform

        try:
            if self.sqs_intake is not None:
                try:
                    self.sqs_intake.terminate()  # SIGTERM: the long poll in progress ends, then it exits
                    self.sqs_intake.wait(60)
                finally:
                    self._log.close()
            if self.home is not None:
                platform.stop(self.home)
        finally:
            if self.moto is not None:
                self.moto.terminate()
                self.moto.wait(10)

    def cli_env(self) -> dict[str, str]:
        """The environment of an operator's shell after the `export` lines `make server` prints, with S3 reaching
        moto: what `millrace ingest` on this platform runs with."""
        import os
        import shlex

        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"MILLRACE_S3_ENDPOINT_URL": self.creds["endpoint_url"], "MILLRACE_S3_KEY": "testing",
                "MILLRACE_S3_SECRET": "testing", "MILLRACE_S3_REGION": "us-east-1"}
        return {**env, **dict(shlex.split(line)[1].split("=", 1) for line in self.ep.exports())}

    def key(self, i: int) -> str:
        return f"uploads/log {self.tag} #{i}.txt"

    def uri(self, i: int) -> str:
        from millrace.uris import s3_uri

        return s3_uri(self.bucket, self.key(i))

    def stream(self, uploads: int, every: float, timeout: float,
               halt: threading.Event | None = None) -> dict[int, float | None]:
        """Upload `uploads` objects one every `every` seconds (in a thread) while polling search for each; upload ->
        seconds until it was found at rank 1 (None if not within `timeout` after the last upload). Setting `halt`
        ends the uploads early (the ones made are still waited for)."""
        import boto3

        uploaded: dict[int, float] = {}
        found: dict[int, float] = {}

        def upload_all() -> None:
            client = boto3.client("s3", **self.creds)
            for i in range(uploads):
                if halt is not None and halt.is_set():
                    return
                uploaded[i] = time.time()  # the PUT returns only after SNS delivered (moto delivers inline)
                client.put_object(Bucket=self.bucket, Key=self.key(i), Body=text(i, self.tag).encode())
                time.sleep(every)

        threading.Thread(target=upload_all, daemon=True).start()
        deadline = time.time() + uploads * every + timeout
        while time.time() < deadline and len(found) < uploads:
            if halt is not None and halt.is_set() and len(found) == len(uploaded):
                break
            for i, t in list(uploaded.items()):
                if i in found:
                    continue
                try:
                    hits = self.retriever.search(text(i, self.tag), k=1)
                except Exception:  # the collection does not exist before the first run
                    hits = []
                if hits and hits[0].source_uri == self.uri(i):
                    found[i] = time.time() - t
            time.sleep(0.25)
        return {i: found.get(i) for i in sorted(uploaded)}

    def ledger_fresh(self) -> dict[str, float]:
        """source URI -> the ledger's own upload-to-committed seconds (documents.fresh_s)."""
        from millrace import clients
        from millrace.config import load_settings

        ledger = clients.ledger(load_settings(home=self.ep.home))
        return {r["source_uri"]: r["fresh_s"] for r in ledger.rows(self.retriever.store.collection)}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far per kind of process on the machine (platform services, moto, this benchmark, its
        finished child processes such as `millrace ingest`); two of them subtracted say where a phase's CPU went."""
        import resource

        import psutil

        kinds = (("moto_server", "S3 (moto)"), ("prefect server", "Prefect server"), ("intake.relay", "relay"),
                 ("intake.sqs", "SQS intake"),
                 ("milvus", "Milvus"), ("dask scheduler", "Dask scheduler"), ("multiprocessing", "Dask workers"),
                 ("dask worker", "Dask workers"), ("prefect.engine", "flow runs"), ("prefect worker", "Prefect worker"),
                 ("serving.server", "API"))
        out: dict[str, float] = {}
        for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            cmd, times = " ".join(proc.info["cmdline"] or []), proc.info["cpu_times"]
            if times is None:
                continue
            kind = "benchmark (uploads, polling)" if proc.info["pid"] == os.getpid() else \
                next((name for pattern, name in kinds if pattern in cmd), "other")
            out[kind] = out.get(kind, 0.0) + times.user + times.system
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["finished children (millrace ingest)"] = children.ru_utime + children.ru_stime
        return out

    def in_flight(self) -> int:
        """Notifications sent but not yet in the change queue: the SQS queue's messages, visible or being handled
        (0 for the relay, which answers SNS only once the change is queued)."""
        if self.wiring != "sqs":
            return 0
        got = self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(got["ApproximateNumberOfMessages"]) + int(got["ApproximateNumberOfMessagesNotVisible"])

    def flow_runs(self) -> int:
        import httpx

        deps = httpx.post(f"{self.ep.api_url}/deployments/filter", json={}, timeout=10).json()
        ids = [d["id"] for d in deps if d["name"] == "drain"]
        # Runs that drained; wake-ups that arrived while one did are CANCELLED by the limit without a process.
        body = {"deployments": {"id": {"any_": ids}},
                "flow_runs": {"state": {"type": {"any_": ["RUNNING", "COMPLETED", "FAILED", "CRASHED"]}}}}
        return int(httpx.post(f"{self.ep.api_url}/flow_runs/count", json=body, timeout=10).json())
