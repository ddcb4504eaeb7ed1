"""A Dask worker process SIGKILLed mid-embedding: Dask reschedules its batch, and the run ends with exactly the
primary keys a clean run of the same records gives, on a standing cluster and on the flow's own LocalCluster."""

import gzip
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from distributed import Client, Scheduler

from flows.ingest import ingest
from millrace import clients
from millrace.config import load_settings
from tests.conftest import ROOT, SHARED, free_port, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = 60


@pytest.fixture()
def records(tmp_path) -> Path:
    """SciFact abstracts as a record file: the run's time goes to the encoder, where the kill lands."""
    path = tmp_path / "abstracts.jsonl"
    with gzip.open(SHARED / "scifact" / "corpus.jsonl.gz", "rt") as fh:
        path.write_text("".join(itertools.islice(fh, RECORDS)))
    return path


def run(source, collection: str) -> dict:
    return ingest(source=str(source), collection=collection)


def rows(collection: str) -> set[tuple[str, str, str]]:
    store = clients.milvus_store(load_settings(collection=collection))
    return {(r["doc_id"], r["chunk_id"], r["text"]) for r in store.rows(None, ["chunk_id", "doc_id", "text"])}


def _batches_running(dask_worker) -> tuple[int, int]:
    return os.getpid(), sum("process_batch" in str(ts.key) for ts in dask_worker.state.executing)


def kill_a_busy_worker(address: str, done: threading.Event, timeout: float = 300.0) -> int:
    """SIGKILL a worker process once it has been running a process-batch task for two polls; returns its pid.
    Gives up when the run is `done` first (the test then fails: nothing was killed)."""
    seen: set[int] = set()
    with Client(address, timeout=30) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done.is_set():
            busy = {pid for pid, n in client.run(_batches_running, on_error="ignore").values() if n}
            if victim := next(iter(busy & seen), None):
                os.kill(victim, signal.SIGKILL)
                return victim
            seen = busy
            time.sleep(0.2)
    raise TimeoutError(f"no worker of {address} was seen running a batch before the run ended")


def assert_mirror(summary: dict, collection: str, clean: set) -> None:
    assert (summary["indexed"], summary["failed"], summary["reconciled"]) == (RECORDS, 0, True)
    assert rows(collection) == clean  # nothing lost, nothing twice


@pytest.fixture()
def standing_dask(prefect_api):
    """A real `dask scheduler` and two nanny-supervised `dask worker` processes on 127.0.0.1."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    # The workers unpickle this module's probe (_batches_running) by reference: they must be able to import it.
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    address = f"tcp://127.0.0.1:{port}"
    try:
        wait_port(port)
        for name in ("w1", "w2"):
            procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--name",
                                           name, "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(30)


def test_a_worker_killed_mid_batch_on_a_standing_cluster_loses_nothing(standing_dask, records, settings,
                                                                       monkeypatch):
    monkeypatch.setenv("MILLRACE_DASK_ADDRESS", standing_dask)
    clean = run(records, settings.collection + "_clean")
    assert clean["indexed"] == RECORDS
    with ThreadPoolExecutor(1) as pool:
        done = threading.Event()
        killer = pool.submit(kill_a_busy_worker, standing_dask, done)
        try:
            summary = run(records, settings.collection)
        finally:
            done.set()
        victim = killer.result(timeout=30)
    assert_mirror(summary, settings.collection, rows(settings.collection + "_clean"))
    with Client(standing_dask, timeout=30) as client:  # the nanny brought the worker back as a new process
        client.wait_for_workers(2, timeout=60)
        assert victim not in client.run(os.getpid).values()


def _flow_scheduler(exclude: str, done: threading.Event, timeout: float = 300.0) -> Scheduler:
    """The scheduler of the LocalCluster the flow starts in this process (not the session's cluster)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done.is_set():
        for scheduler in list(Scheduler._instances):
            if scheduler.address != exclude and scheduler.status.name == "running" and scheduler.workers:
                return scheduler
        time.sleep(0.2)
    raise TimeoutError("the flow started no LocalCluster, or it ended before it was seen")


def test_a_worker_killed_mid_batch_on_the_flows_own_local_cluster_loses_nothing(records, settings, dask_cluster,
                                                                               monkeypatch):
    clean = run(records, settings.collection + "_clean")  # on the session's cluster
    assert clean["indexed"] == RECORDS
    monkeypatch.delenv("MILLRACE_DASK_ADDRESS")
    monkeypatch.setenv("MILLRACE_DASK_WORKERS", "2")
    monkeypatch.setenv("MILLRACE_DASK_THREADS", "1")
    assert RECORDS > load_settings().inprocess_max_docs  # so the flow starts its own cluster

    done = threading.Event()

    def kill() -> tuple[int, int]:
        scheduler = _flow_scheduler(dask_cluster.scheduler_address, done)
        return scheduler.allowed_failures, kill_a_busy_worker(scheduler.address, done)

    with ThreadPoolExecutor(1) as pool:
        killer = pool.submit(kill)
        try:
            summary = run(records, settings.collection)
        finally:
            done.set()
        allowed, victim = killer.result(timeout=30)
    assert allowed == 1 and victim  # flows.runner's setting: one death is rescheduled, not fatal
    assert_mirror(summary, settings.collection, rows(settings.collection + "_clean"))
