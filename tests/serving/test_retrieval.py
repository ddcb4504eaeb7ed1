"""The API's snapshot of what serves (serving.retrieval.RetrievalService.snapshot): read from the ledger once, then
reused while nothing commits to it, and read again after any commit: a run's start or end (the index version that
cache entries carry), a rebuild's swap (the physical collection), from this process or another. The same holds for
whether a cached result's documents are still served (still_served): a deletion is a commit, so it is seen at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from millrace import clients
from millrace.index import versions
from millrace.documents.records import DocSummary
from millrace.index.store import MilvusStore
from serving.cache import make_cache
from serving.config import ServeSettings
from serving.metrics import Metrics
from serving.retrieval import RetrievalService

pytestmark = pytest.mark.integration


@pytest.fixture()
def service(tmp_path):
    settings = ServeSettings(home=tmp_path / "serve home #2 + café", collection="snapshots", cache=False)
    physical = versions.ensure_registered(settings)
    MilvusStore(versions.physical_settings(settings, physical)).ensure_collection(384)
    svc = RetrievalService(settings, Metrics(), make_cache(settings))
    yield svc
    svc.close()
    clients.forget(settings)


def test_a_snapshot_is_reused_until_the_ledger_commits(service, monkeypatch):
    reads = []
    index_version = service.ledger.index_version
    monkeypatch.setattr(service.ledger, "index_version", lambda c: reads.append(c) or index_version(c))
    snap = lambda: asyncio.run(service.snapshot())  # noqa: E731

    first = snap()
    assert snap() is first and len(reads) == 1  # nothing committed: no ledger read

    service.ledger.start_run("snapshots", "run-1", "/data/Q1 plans/", {})  # a run starts: the version moves
    second = snap()
    assert second.version != first.version and len(reads) == 2 and snap() is second

    code = "import sys; from millrace.ledger.book import Ledger; Ledger(sys.argv[1]).set_run_state('run-1', 'done')"
    subprocess.run([sys.executable, "-c", code, service.settings.resolved_ledger_url], check=True)
    third = snap()  # another process's commit
    assert third.version not in (first.version, second.version) and len(reads) == 3

    # A rebuild's swap: the next snapshot names the new physical collection.
    new = versions.new_version(service.settings)
    MilvusStore(versions.physical_settings(service.settings, new)).ensure_collection(384)
    versions.swap(service.settings, new)
    swapped = snap()
    assert swapped.store.collection == new != first.store.collection and snap() is swapped


def test_still_served_reads_the_ledger_again_after_any_commit(service, monkeypatch):
    ledger, reads = service.ledger, []
    indexed_ids = ledger.indexed_ids
    monkeypatch.setattr(ledger, "indexed_ids", lambda c, ids: reads.append(list(ids)) or indexed_ids(c, ids))
    snap = asyncio.run(service.snapshot())
    coll = snap.store.collection
    doc = lambda d: DocSummary(doc_id=d, source_uri=f"file:///data/Q1%20plans/{d} #1.txt", fingerprint="f",  # noqa: E731
                               content_hash="h", chunks=2)
    ledger.record_batch(coll, [doc("a"), doc("b")], [], "v1")
    served = lambda ids: asyncio.run(service.still_served(snap, ids))  # noqa: E731

    assert served(["a", "b"]) and served(["a", "b"]) and len(reads) == 1  # nothing committed: asked once
    assert not served(["a", "c"]) and not served(["a", "c"]) and len(reads) == 2

    ledger.record_deleted(coll, ["b"])  # this process's commit
    assert not served(["a", "b"]) and len(reads) == 3

    code = ("import sys; from millrace.ledger.book import Ledger; from millrace.documents.records import DocSummary; "
            "Ledger(sys.argv[1]).record_batch(sys.argv[2], [DocSummary(doc_id='c', source_uri='file:///c', "
            "fingerprint='f', content_hash='h', chunks=1)], [], 'v1')")
    subprocess.run([sys.executable, "-c", code, service.settings.resolved_ledger_url, coll], check=True)
    assert served(["a", "c"]) and len(reads) == 4  # another process's commit
    assert served([]) and len(reads) == 4
