"""The real Milvus standalone server stopped mid-write and started again on the same data and port: a run rides it out
when its retries outlast the outage, and otherwise fails saying so; either way the index ends equal to a clean run's.

The server is the session's `milvus_server` (only one standalone fits on a machine: its etcd binds 2379/2380), so
every test here restarts it in a `finally` and waits until it answers again."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
from sqlalchemy import func, select

from flows.ingest import ingest
from millrace import clients
from millrace.config import load_settings
from millrace.ledger.book import pending
from tests.faultproxy import wait_until
from tests.flows.test_faults_s3 import clean_rows, run_states
from tests.flows.test_mirror import rows, words

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def restart(server, timeout: float = 90.0) -> None:
    """Start the stopped server again on its port. The package checks the port with a plain bind first, which fails
    while the killed server's connections sit in TIME_WAIT: try again until it binds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.start()
            return
        except RuntimeError as exc:
            if "bind failed" not in str(exc) or time.monotonic() > deadline:
                raise
            server.stop()
            time.sleep(1)


def serving(uri: str) -> bool:
    from millrace.index.connect import pymilvus

    try:
        pymilvus().MilvusClient(uri=uri, timeout=5).list_collections()
        return True
    except Exception:
        return False


@contextmanager
def outage_when_staged(settings, server, uri: str, seconds: float):
    """In the background: once the run has staged a batch (pending rows in the ledger), stop the server for `seconds`,
    then start it again. The server is always running again when the block exits."""
    ledger, stopped = clients.ledger(settings), threading.Event()
    done, errors = threading.Event(), []

    def staged() -> bool:
        with ledger.engine.connect() as conn:
            return bool(conn.execute(select(func.count()).select_from(pending)
                                     .where(pending.c.collection.startswith(settings.collection))).scalar())

    def fault():
        try:
            wait_until(lambda: staged() or done.is_set(), "a staged batch", timeout=90, every=0.05)
            if done.is_set():
                return
            server.stop()
            stopped.set()
            time.sleep(seconds)
        except Exception as exc:  # reported by the test, not lost in a thread
            errors.append(exc)
        finally:
            if stopped.is_set():
                restart(server)

    thread = threading.Thread(target=fault, daemon=True)
    thread.start()
    try:
        yield stopped
    finally:
        done.set()
        thread.join(120)
        if not server.running:
            restart(server)
        wait_until(lambda: serving(uri), "Milvus to serve again", timeout=90, every=0.5)
    assert not errors, errors


@pytest.fixture()
def folder(tmp_path):
    path = tmp_path / "docs"
    path.mkdir()
    for i in range(10):
        (path / f"note {i} #{i % 3}.txt").write_text(words(i))
    return path


@pytest.fixture()
def server_settings(milvus_server, settings, monkeypatch):
    monkeypatch.setenv("MILLRACE_MILVUS_URI", milvus_server)
    monkeypatch.setenv("MILLRACE_DOCS_PER_BATCH", "1")  # a batch staged at a time: the outage lands mid-write
    return load_settings(collection=settings.collection)


def test_a_run_rides_out_a_milvus_restart_when_its_retries_outlast_it(server_settings, folder, milvus_server,
                                                                      monkeypatch):
    from milvus import default_server

    # About 60 s of retries (at least 31 s with the jitter) per call: more than 20 s stopped plus the restart.
    monkeypatch.setenv("MILLRACE_RETRY_DELAYS", "[2, 4, 8, 16, 16, 16]")
    s = load_settings(collection=server_settings.collection)
    with outage_when_staged(s, default_server, milvus_server, seconds=20) as stopped:
        summary = ingest(source=str(folder), collection=s.collection)
    assert stopped.is_set(), "the run ended before the outage began"
    assert summary["reconciled"] and (summary["indexed"], summary["failed"]) == (10, 0)
    assert run_states(s) == ["done"] and rows(s) == clean_rows(str(folder), s)


def test_a_run_whose_retries_end_inside_the_outage_fails_clearly_and_the_next_converges(
        server_settings, folder, milvus_server):
    from milvus import default_server

    s = server_settings  # MILLRACE_RETRY_DELAYS [0.2, 0.5]: about a second of retries per call
    with outage_when_staged(s, default_server, milvus_server, seconds=5) as stopped:
        with pytest.raises(Exception) as failed:
            ingest(source=str(folder), collection=s.collection)
    assert stopped.is_set()
    assert f"Milvus at {milvus_server} did not answer" in str(failed.value) and "after 3 tries" in str(failed.value)
    assert run_states(s)[-1] in ("failed", "running")  # "running": its rollback could not reach Milvus either

    again = ingest(source=str(folder), collection=s.collection)
    assert again["reconciled"] and again["indexed"] + again["skipped"] == 10
    assert run_states(s)[-1] == "done" and rows(s) == clean_rows(str(folder), s)
