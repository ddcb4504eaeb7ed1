"""Versioned physical collections on Milvus Lite (no aliases: the ledger's registry is what readers resolve)."""

import time

import numpy as np
import pytest

from millrace import clients
from millrace.config import ConfigError, Settings
from millrace.documents.records import Chunk, DocSummary
from millrace.index import versions
from millrace.ledger.book import Ledger
from millrace.ledger.lease import Lease
from millrace.search import Retriever

pytestmark = pytest.mark.integration

TEXT = {"a": "The weir keeper logs the tide height every morning.", "b": "Sluice gates open at high water."}


@pytest.fixture()
def settings(tmp_path):
    s = Settings(home=tmp_path / "home", collection="docs", retry_delays=[0.1])
    yield s
    clients.forget(s)


def fill(settings: Settings, physical: str, tag: str = "") -> None:
    """What an ingest leaves: chunks in the physical collection, and its ledger rows under the physical name."""
    psettings = versions.physical_settings(settings, physical)
    store, embedder = clients.milvus_store(psettings), clients.embedder(psettings)
    store.ensure_collection(embedder.dim)
    vectors = embedder.encode(list(TEXT.values()))
    store.upsert([Chunk(chunk_id=f"{doc}-0{tag}", doc_id=doc, chunk_index=0, text=text, source_uri=f"file:///d/{doc}",
                        content_hash=doc, vector=v) for (doc, text), v in zip(TEXT.items(), vectors)])
    clients.ledger(settings).record_batch(physical, [DocSummary(doc_id=d, source_uri=f"file:///d/{d}", fingerprint="f",
                                                                content_hash=d, chunks=1) for d in TEXT], [], "v")


def states(settings: Settings) -> dict[str, str]:
    return {v.physical: v.state for v in versions.registry(settings)}


def test_the_first_write_keeps_the_name_on_lite_and_registers_it(settings):
    assert versions.active_physical(settings) == "docs"  # nothing yet: what the first write will create
    with versions.writing(settings) as target:
        assert target.collection == "docs" and target.model == settings.model
        fill(settings, target.collection)
    [v0] = versions.registry(settings)
    assert (v0.physical, v0.version, v0.state, v0.options) == ("docs", 0, "active", {})
    assert v0.model.startswith("all-MiniLM-L6-v2@")
    assert versions.active_physical(settings) == "docs"


def test_a_new_version_is_swapped_in_rolled_back_and_rolled_forward(settings):
    with versions.writing(settings) as target:
        fill(settings, target.collection)
    new = versions.new_version(settings, {"chunk_size": 64})
    assert new == "docs__v1" and states(settings) == {"docs": "active", "docs__v1": "building"}
    pinned = versions.physical_settings(settings, new)
    assert (pinned.collection, pinned.chunk_size, pinned.chunk_overlap) == (new, 64, settings.chunk_overlap)
    with pytest.raises(ConfigError, match="no such collection"):
        versions.swap(settings, new)  # nothing built yet
    fill(settings, new, tag="-v1")
    retriever = Retriever(settings)
    assert {h.collection for h in retriever.search("tide height", k=2)} == {"docs"}

    assert versions.swap(settings, new, grace_s=3600) == "docs"
    assert versions.active_physical(settings) == new and states(settings) == {"docs": "previous", new: "active"}
    previous = next(v for v in versions.registry(settings) if v.physical == "docs")
    assert 3500 < previous.retire_after - time.time() <= 3600
    hits = retriever.search("tide height", k=2)
    assert {h.collection for h in hits} == {new} and hits[0].chunk_id == "a-0-v1"
    with versions.writing(settings) as target:  # ordinary ingests now write the new one, with its pinned chunking
        assert (target.collection, target.chunk_size) == (new, 64)
    with pytest.raises(ConfigError, match="docs__v1 is a physical collection of docs: write it through"):
        versions.ensure_registered(settings.model_copy(update={"collection": new}))  # around the lease of `docs`
    with pytest.raises(ConfigError, match="not a registered physical collection of docs"):
        with versions.writing(settings, physical="elsewhere"):
            pass

    assert versions.rollback(settings) == (new, "docs")
    assert versions.active_physical(settings) == "docs" and retriever.search("tide", k=1)[0].collection == "docs"
    assert versions.rollback(settings) == ("docs", new)  # the rolled-back-from one is kept too: roll forward
    assert versions.retire_expired(settings, time.time() + 2 * versions.DEFAULT_GRACE_S) == ["docs"]
    with pytest.raises(ConfigError, match="no previous collection"):
        versions.rollback(settings)


def test_replaced_and_failed_collections_are_dropped_after_their_grace_period(settings):
    with versions.writing(settings) as target:
        fill(settings, target.collection)
    v1 = versions.new_version(settings)
    fill(settings, v1)
    versions.swap(settings, v1, grace_s=60)
    v2 = versions.new_version(settings, grace_s=60)
    fill(settings, v2)
    versions.abandon(settings, v2, grace_s=60)  # e.g. refused by the evaluation gate
    assert states(settings) == {"docs": "previous", v1: "active", v2: "failed"}

    assert versions.retire_expired(settings, time.time()) == []
    assert sorted(versions.retire_expired(settings, time.time() + 61)) == sorted(["docs", v2])
    assert states(settings) == {"docs": "retired", v1: "active", v2: "retired"}
    assert not clients.milvus_store(settings, "docs").exists() and not clients.milvus_store(settings, v2).exists()
    ledger = clients.ledger(settings)
    assert ledger.rows("docs") == [] and ledger.rows(v2) == [] and len(ledger.rows(v1)) == 2
    assert versions.active_physical(settings) == v1 and Retriever(settings).search("sluice", k=1)[0].collection == v1
    assert versions.new_version(settings) == "docs__v3"  # numbers are never reused


def test_a_legacy_collection_is_adopted_as_version_zero(settings):
    store = clients.milvus_store(settings, "docs")
    store.ensure_collection(384, model="older-model@sha256:0123")  # made before versions existed: no registry row
    assert versions.registry(settings) == [] and versions.active_physical(settings) == "docs"
    versions.check_swappable(settings)  # Lite: the ledger resolves the name, so a rebuild may replace it
    assert versions.ensure_registered(settings) == "docs"
    [v0] = versions.registry(settings)
    assert (v0.version, v0.state, v0.model) == (0, "active", "older-model@sha256:0123")


def test_a_search_whose_collection_vanished_resolves_again(settings, monkeypatch):
    with versions.writing(settings) as target:
        fill(settings, target.collection)
    v1 = versions.new_version(settings)
    fill(settings, v1)
    versions.swap(settings, v1, grace_s=0.001)
    time.sleep(0.01)
    assert versions.retire_expired(settings) == ["docs"]
    retriever = Retriever(settings)
    real, calls = versions.active_physical, []

    def stale_then_real(s):  # the first resolution happened just before the grace period ended
        calls.append(1)
        return "docs" if len(calls) == 1 else real(s)

    monkeypatch.setattr(versions, "active_physical", stale_then_real)
    [hit] = retriever.search("sluice gates", k=1)
    assert hit.collection == v1 and len(calls) == 2


@pytest.mark.unit
def test_a_run_that_holds_the_lease_can_open_it_again(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.sqlite")
    with Lease(ledger, "docs", "rebuild-1", "rebuild", ttl_s=5) as outer:
        with Lease(ledger, "docs", "rebuild-1", "ingest", ttl_s=5, wait_s=0.5) as inner:
            assert inner.waited_s == 0 and inner.lost is outer.lost
        outer.check()  # the inner one released nothing
        assert outer.renew()
        with pytest.raises(Exception, match="still being written by run rebuild-1"):
            Lease(ledger, "docs", "other-run", "ingest", ttl_s=5, wait_s=0.3).acquire()


@pytest.mark.unit
def test_a_rebuild_reingests_the_whole_sources_of_the_active_collection(tmp_path):
    s = Settings(home=tmp_path, collection="docs")
    ledger = clients.ledger(s)
    check = {"ok": True, "milvus_count": 0, "ledger_count": 0, "mismatched_docs": []}
    scopes = [{"source": "s3://b/docs", "include": [], "exclude": [], "objects": None},
              {"source": "s3://b/docs", "include": [], "exclude": [], "objects": ["a.pdf"]},  # an S3 event batch
              {"source": "file:///data", "include": ["*.md"], "exclude": [], "objects": None, "since": 1.0},
              {"source": "file:///data", "include": ["*.md"], "exclude": [], "objects": None},
              {"source": "s3://b/docs", "include": [], "exclude": [], "objects": None}]
    for i, scope in enumerate(scopes):
        ledger.record_run("docs__v2", scope["source"], check, {}, f"r{i}", scope)
    ledger.record_run("docs__v1", "s3://b/old", check, {}, "r9", {"source": "s3://b/old", "objects": None})
    assert versions.full_scopes(s, "docs__v2") == [{"source": "s3://b/docs", "include": [], "exclude": []},
                                                   {"source": "file:///data", "include": ["*.md"], "exclude": []}]
    clients.forget(s)
