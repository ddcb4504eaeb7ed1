"""Staged writes: added next to the old version, then committed or rolled back; dead runs are recovered."""

import numpy as np
import pytest

from millrace.config import Settings
from millrace.documents.records import BatchResult, Chunk, DocSummary, Failure
from millrace.index.staging import commit, recover, rollback, stage_batch
from millrace.index.store import MilvusStore
from millrace.ledger.book import Ledger

pytestmark = pytest.mark.integration  # real Milvus Lite


@pytest.fixture()
def env(tmp_path):
    settings = Settings(home=tmp_path / "home", collection="staging", retry_delays=[0.1])
    store = MilvusStore(settings)
    store.ensure_collection(4, "test-model")
    yield store, Ledger(settings.resolved_ledger_url)
    store.close()


def version_of(doc: str, texts: list[str], fp: str) -> BatchResult:
    chunks = [Chunk(chunk_id=f"{doc}-{i}-{t}", doc_id=doc, chunk_index=i, text=t, source_uri=f"file:///{doc}",
                    content_hash=t, vector=np.eye(4, dtype=np.float32)[i % 4]) for i, t in enumerate(texts)]
    return BatchResult(documents=[DocSummary(doc_id=doc, source_uri=f"file:///{doc}", fingerprint=fp,
                                             content_hash=fp, chunks=len(chunks))], chunks=chunks)


def ids(store):
    return {i for doc in store.chunk_ids().values() for i in doc}


def test_a_staged_batch_adds_beside_the_old_version_and_rollback_restores_it(env):
    store, ledger = env
    stage_batch(store, ledger, "staging", "r1", version_of("d", ["a", "b"], "v1"), "p")
    commit(store, ledger, "r1")
    assert ids(store) == {"d-0-a", "d-1-b"} and ledger.rows("staging")[0]["fingerprint"] == "v1"

    stage_batch(store, ledger, "staging", "r2", version_of("d", ["a", "c"], "v2"), "p")
    assert ids(store) == {"d-0-a", "d-1-b", "d-1-c"}  # old and new side by side: nothing is lost meanwhile
    rollback(store, ledger, "r2")
    assert ids(store) == {"d-0-a", "d-1-b"} and ledger.rows("staging")[0]["fingerprint"] == "v1"

    stage_batch(store, ledger, "staging", "r3", version_of("d", ["a", "c"], "v2"), "p")
    commit(store, ledger, "r3")
    assert ids(store) == {"d-0-a", "d-1-c"}
    row = ledger.rows("staging")[0]
    assert (row["fingerprint"], row["chunks"], row["run_id"]) == ("v2", 2, "r3")


def test_a_failed_new_version_keeps_the_old_one_searchable_and_counted(env):
    store, ledger = env
    stage_batch(store, ledger, "staging", "r1", version_of("d", ["a", "b"], "v1"), "p")
    commit(store, ledger, "r1")
    failed = BatchResult(failures=[Failure(doc_id="d", source_uri="file:///d", fingerprint="v2", stage="extract",
                                           reason="timeout", detail="parse exceeded 1s")])
    stage_batch(store, ledger, "staging", "r2", failed, "p", backoff=(60, 600))
    commit(store, ledger, "r2")
    row = ledger.rows("staging")[0]
    assert ids(store) == {"d-0-a", "d-1-b"}
    assert (row["state"], row["reason"], row["chunks"], row["content_hash"], row["attempts"]) == \
        ("failed", "timeout", 2, "v1", 1)
    assert ledger.chunk_total("staging") == store.count() == 2
    stage_batch(store, ledger, "staging", "r3", failed, "p", backoff=(60, 600))
    commit(store, ledger, "r3")
    row = ledger.rows("staging")[0]
    assert row["attempts"] == 2 and row["next_attempt_at"] - row["updated_at"] == pytest.approx(60, abs=1)


def test_recovery_rolls_back_a_dead_run_and_rolls_forward_one_that_was_committing(env):
    store, ledger = env
    stage_batch(store, ledger, "staging", "r1", version_of("d", ["a", "b"], "v1"), "p")
    commit(store, ledger, "r1")
    ledger.start_run("staging", "dead", "src", {})
    stage_batch(store, ledger, "staging", "dead", version_of("d", ["x"], "v2"), "p")
    assert recover(store, ledger, "staging", "me")[0]["action"] == "rolled back"
    assert ids(store) == {"d-0-a", "d-1-b"} and ledger.run_state("dead") == "failed"

    ledger.start_run("staging", "dying", "src", {})
    stage_batch(store, ledger, "staging", "dying", version_of("d", ["x"], "v2"), "p")
    ledger.set_run_state("dying", "committing")  # it died inside its commit
    assert recover(store, ledger, "staging", "me")[0]["action"] == "committed"
    assert ids(store) == {"d-0-x"} and ledger.rows("staging")[0]["fingerprint"] == "v2"
    assert recover(store, ledger, "staging", "me") == []
