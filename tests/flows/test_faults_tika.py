"""Poison documents through the real JVM: a parse that hangs, and one that halts the JVM (taking its process along).

The faults are markers in MILLRACE_TEST_FAULT_DIR (tests/hooks/faults.py) acting inside Tika's timed parse thread,
so the real timeout, the real worker death and Dask's real rescheduling run. Each test checks the mirror: the
primary keys in Milvus equal a clean run's of the same folder, with the poison document's previous version served
until the run after the fault is gone indexes it."""

import os
import subprocess
import sys
import time

import pytest

from flows.ingest import ingest
from millrace import clients
from millrace.config import load_settings
from millrace.documents.records import doc_id_for
from millrace.observe.collection_report import status_report
from millrace.uris import path_to_uri
from tests.conftest import HOOKS_SITE
from tests.hooks.faults import Faults

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMES = [f"station {i}.txt" for i in range(6)]


def write(folder, edition: str) -> list[str]:
    """Six text files; returns their doc ids in processing order (by doc id)."""
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(NAMES):
        (folder / name).write_text(f"Station {i} logs the tide at the {['mill', 'weir', 'lock'][i % 3]} every "
                                   f"morning; gauge {i * 17 % 89} reads the height. Edition: {edition}.")
    return sorted(doc_id_for(path_to_uri(folder / n)) for n in NAMES)


def run(folder, collection: str) -> dict:
    return ingest(source=str(folder), collection=collection)


def rows(collection: str) -> set[tuple[str, str, str]]:
    store = clients.milvus_store(load_settings(collection=collection))
    return {(r["doc_id"], r["chunk_id"], r["text"]) for r in store.rows(None, ["chunk_id", "doc_id", "text"])}


def of(doc_id: str, rowset: set) -> set:
    return {r for r in rowset if r[0] == doc_id}


def entry(collection: str, doc_id: str) -> dict:
    return next(d for d in status_report(load_settings(collection=collection))["documents"] if d["doc_id"] == doc_id)


def assert_failed_but_served(summary: dict, collection: str, poison: str, reason: str, old: set, clean: set):
    """The rest of the run is indexed; the poison document failed transiently and its old version is served."""
    assert (summary["indexed"], summary["failed"], summary["reconciled"]) == (len(NAMES) - 1, 1, True)
    failure = summary["failures"][0]
    assert (failure["doc_id"], failure["reason"], failure["transient"]) == (poison, reason, True)
    doc = entry(collection, poison)
    assert (doc["state"], doc["reason"], doc["retry"], doc["attempts"]) == ("failed", reason, "automatic", 1)
    assert doc["serving_previous_version"] and doc["next_attempt_at"] <= time.time()  # due at the next run
    # Nothing lost or duplicated: the clean run's keys for every other document, the old ones for the poison.
    assert rows(collection) == (clean - of(poison, clean)) | of(poison, old)


@pytest.fixture()
def env(tmp_path, settings, monkeypatch):
    """A folder indexed once (edition 1) in-process, then edited (edition 2); the clean run of edition 2 into a
    collection of its own; the fault folder. Yields (folder, collection, doc ids, faults, old rows, clean rows)."""
    monkeypatch.delenv("MILLRACE_DASK_ADDRESS")
    folder, faults = tmp_path / "docs", Faults()
    ids = write(folder, "one")
    assert run(folder, settings.collection)["indexed"] == len(NAMES)
    old = rows(settings.collection)
    write(folder, "two")
    assert run(folder, settings.collection + "_clean")["indexed"] == len(NAMES)
    clean = rows(settings.collection + "_clean")
    assert of(ids[0], clean) != of(ids[0], old)
    yield folder, settings.collection, ids, faults, old, clean
    faults.clear()


def test_a_document_that_halts_the_jvm_is_isolated_from_its_batch_and_retried_later(env, monkeypatch):
    folder, collection, ids, faults, old, clean = env
    poison = ids[0]
    faults.arm(poison, "jvm_exit")
    # The flow's own LocalCluster (flows.runner), one worker process that its nanny restarts, batches of three: the
    # poison's batch kills the worker twice, its halves are tried, and the poison alone kills it twice more.
    monkeypatch.setenv("MILLRACE_INPROCESS_MAX_DOCS", "0")
    monkeypatch.setenv("MILLRACE_DOCS_PER_BATCH", "3")
    monkeypatch.setenv("MILLRACE_DASK_WORKERS", "1")
    monkeypatch.setenv("MILLRACE_DASK_THREADS", "1")
    summary = run(folder, collection)
    assert "worker process died 4 times" in summary["failures"][0]["detail"]
    assert_failed_but_served(summary, collection, poison, "worker_lost", old, clean)

    faults.disarm(poison)
    monkeypatch.delenv("MILLRACE_INPROCESS_MAX_DOCS")
    retried = run(folder, collection)
    assert (retried["processed"], retried["indexed"], retried["reconciled"]) == (1, 1, True)
    assert rows(collection) == clean


def test_a_parse_that_hangs_times_out_and_the_rest_of_the_batch_is_indexed(env, monkeypatch):
    folder, collection, ids, faults, old, clean = env
    poison = ids[2]
    faults.arm(poison, "hang")
    monkeypatch.setenv("MILLRACE_PARSE_TIMEOUT_S", "2")
    summary = run(folder, collection)  # in-process: this process's own JVM and parse timeout
    assert summary["failures"][0]["detail"] == "parse exceeded 2s"
    assert_failed_but_served(summary, collection, poison, "timeout", old, clean)

    faults.disarm(poison)
    retried = run(folder, collection)
    assert (retried["processed"], retried["indexed"], retried["reconciled"]) == (1, 1, True)
    assert rows(collection) == clean


def test_a_jvm_death_in_the_flow_process_is_recovered_by_the_next_run(env, tmp_path, prefect_api, monkeypatch):
    """Small change sets run in the flow's own process: a JVM death there takes the run with it (no cluster to
    isolate it). Its staged batches are undone by the next run's recovery, which then indexes the folder."""
    folder, collection, ids, faults, old, clean = env
    # A home of its own: Milvus Lite lets one process open its data, and this one holds the fixture's.
    monkeypatch.setenv("MILLRACE_HOME", str(tmp_path / "home-crash"))
    poison = ids[-1]  # the last batch: earlier ones are staged in Milvus and the ledger when the process dies
    faults.arm(poison, "jvm_exit")
    monkeypatch.setenv("MILLRACE_DOCS_PER_BATCH", "2")  # a handful of documents would otherwise be one batch
    child = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(folder), "--collection", collection],
                           env={**os.environ, "PREFECT_API_URL": prefect_api,  # with the hooks: its sitecustomize
                                "PYTHONPATH": os.pathsep.join([str(HOOKS_SITE), os.environ.get("PYTHONPATH", "")])},
                           capture_output=True, text=True,
                           timeout=180)
    assert child.returncode == 134, child.stderr[-2000:]

    faults.disarm(poison)
    summary = run(folder, collection)
    [recovered] = summary["recovered"]
    assert recovered["action"] == "rolled back" and recovered["chunks_removed"] > 0
    assert (summary["indexed"], summary["failed"], summary["reconciled"]) == (len(NAMES), 0, True)
    assert rows(collection) == clean
