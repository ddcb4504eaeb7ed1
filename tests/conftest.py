"""Real services for the tests, each started once per session: Prefect, Dask, moto S3, Milvus standalone."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dask
import pytest

from millrace import quiet
from tests.hooks import faults

quiet.apply()

# The fault and crash hooks (tests/hooks/faults.py) in this process and in the workers of every LocalCluster the tests
# start, the flows' own included; they act only when a test arms them through the environment.
faults.install()
dask.config.set({"distributed.worker.preload": ["tests.hooks.faults"]})
if faults.FAULT_DIR not in os.environ:  # before any process starts: every process of the session sees one folder
    os.environ[faults.FAULT_DIR] = tempfile.mkdtemp(prefix="millrace-faults-")
    atexit.register(shutil.rmtree, os.environ[faults.FAULT_DIR], True)
# `millrace` subprocesses that a test wants the hooks in put this folder on their PYTHONPATH (its sitecustomize).
HOOKS_SITE = Path(__file__).resolve().parent / "hooks" / "site"

# Every test has its own MILLRACE_HOME; the default encoder's ONNX export (~7 s) is made once per session instead of
# once per home. Set beforehand, a developer's own cache is used (and kept).
if "MILLRACE_MODEL_CACHE" not in os.environ:
    os.environ["MILLRACE_MODEL_CACHE"] = tempfile.mkdtemp(prefix="millrace-models-")
    atexit.register(shutil.rmtree, os.environ["MILLRACE_MODEL_CACHE"], True)

ROOT = Path(__file__).resolve().parents[1]
# The tiny model's vLLM server and Redis (tests/dev/servers.py), for the serving tests and dev/'s own.
pytest_plugins = ["tests.dev.servers"]
SHARED = Path(os.environ.get("MILLRACE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture()
def faults_armed():
    """Fault markers for this test (tests/hooks/faults.py), cleared after it."""
    armed = faults.Faults()
    yield armed
    armed.clear()


@pytest.fixture(scope="session")
def shared_docs() -> Path:
    path = SHARED / "docs"
    if not (path / "MANIFEST.tsv").is_file():
        pytest.fail(f"test data not found at {path}: set MILLRACE_SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """A real Prefect API (SQLite) for the session; its URL is exported so Dask workers report to it."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        yield PREFECT_API_URL.value()
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def dask_cluster(prefect_api):
    """One warm LocalCluster (worker processes) shared by the flow tests: the model loads once per worker."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None)
    yield cluster
    cluster.close()


@pytest.fixture()
def settings(tmp_path, dask_cluster, monkeypatch):
    """Settings for one test: its own MILLRACE_HOME (Lite file, ledger) and collection, the session cluster."""
    from millrace.config import load_settings

    monkeypatch.setenv("MILLRACE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MILLRACE_DASK_ADDRESS", dask_cluster.scheduler_address)
    monkeypatch.setenv("MILLRACE_RETRY_DELAYS", "[0.2, 0.5]")
    return load_settings(collection=f"t_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3 API server process (moto server) on loopback; yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture()
def s3_env(moto_s3, monkeypatch):
    """MILLRACE_S3_* pointing at the moto server for this test; a boto3 S3 client for it."""
    import boto3

    for key, value in {"MILLRACE_S3_ENDPOINT_URL": moto_s3, "MILLRACE_S3_KEY": "testing",
                       "MILLRACE_S3_SECRET": "testing", "MILLRACE_S3_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    return boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                        region_name="us-east-1")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """The real Milvus standalone server from the PyPI `milvus` package, once per session."""
    from milvus import default_server

    # The embedded etcd always binds 2379/2380: a Milvus standalone still running (the platform's, another
    # session's) would make this one hang until its start-up timeout. Wait for it to go, then say which it is.
    deadline = time.monotonic() + 120
    while any(port_taken(p) for p in (2379, 2380)) and time.monotonic() < deadline:
        time.sleep(1)
    if any(port_taken(p) for p in (2379, 2380)):
        pytest.fail("another Milvus standalone server holds etcd's ports 2379/2380; stop it (`make stop`, or the "
                    "`milvus run standalone` process) and run the tests again", pytrace=False)
    from millrace.platform.milvus_server import configure

    configure(default_server)  # as `make server` runs it
    default_server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    default_server.listen_port = free_port()
    default_server.start()
    try:
        yield f"http://127.0.0.1:{default_server.listen_port}"
    finally:
        default_server.stop()


@pytest.fixture()
def sample_dir(tmp_path) -> Path:
    from millrace.sources.samples import write_samples

    write_samples(tmp_path / "samples")
    return tmp_path / "samples"
