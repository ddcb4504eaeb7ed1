"""The index as a provable mirror of its source: incremental runs, reuse, deletions, gates, crash safety."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.ingest import ReconciliationError, ingest
from millrace.clients import milvus_store
from millrace.config import load_settings
from millrace.documents.quality import QualityGateError
from millrace.ledger.book import Ledger
from millrace.search import Retriever
from tests.conftest import HOOKS_SITE

pytestmark = pytest.mark.integration


def run(source, settings, **kwargs):
    return ingest(source=str(source), collection=settings.collection, **kwargs)


def long_text(n: int, topic: str = "river") -> str:
    return "\n\n".join(f"Paragraph {i} of the {topic} report: the gauge at station {i} read {i * 7 % 31} "
                       f"centimetres above normal, and crew {i % 5} inspected weir number {i}." for i in range(n))


def test_unchanged_rerun_embeds_nothing_and_an_edit_reuses_unchanged_chunks(sample_dir, settings):
    (sample_dir / "river-report.txt").write_text(long_text(120))
    first = run(sample_dir, settings)
    doc_chunks = {d["source_uri"].rsplit("/", 1)[1]: d["chunks"] for d in Ledger(settings.resolved_ledger_url).rows(
        settings.collection)}["river-report.txt"]
    assert doc_chunks > 10 and first["chunks_embedded"] == first["chunks_written"]

    again = run(sample_dir, settings)
    assert (again["processed"], again["chunks_embedded"]) == (0, 0)

    (sample_dir / "river-report.txt").write_text(long_text(120) + "\n\nAddendum: the fish counter was recalibrated.")
    edited = run(sample_dir, settings)
    assert (edited["processed"], edited["indexed"]) == (1, 1)
    assert edited["chunks_reused"] >= doc_chunks - 2 and 1 <= edited["chunks_embedded"] <= 2
    assert edited["reconciled"]
    assert any("recalibrated" in h.text for h in Retriever(settings, milvus_store(settings)).search(
        "fish counter recalibrated", k=3))


def test_changing_the_chunk_size_reprocesses_everything_without_orphans(sample_dir, settings, monkeypatch, tmp_path):
    run(sample_dir, settings)
    monkeypatch.setenv("MILLRACE_CHUNK_SIZE", "48")
    monkeypatch.setenv("MILLRACE_CHUNK_OVERLAP", "8")
    resized = load_settings(collection=settings.collection)
    second = run(sample_dir, resized)
    assert second["processed"] == second["seen"] == 9 and second["reconciled"]
    monkeypatch.setenv("MILLRACE_HOME", str(tmp_path / "clean"))
    clean = load_settings(collection=settings.collection)
    run(sample_dir, clean)
    assert milvus_store(resized).chunk_ids() == milvus_store(clean).chunk_ids()


def test_retry_failed_reprocesses_only_failed_documents(sample_dir, settings):
    run(sample_dir, settings)
    assert run(sample_dir, settings)["processed"] == 0
    retried = run(sample_dir, settings, retry_failed=True)
    assert retried["processed"] == 2 and {f["reason"] for f in retried["failures"]} == {"empty", "no_text"}


def test_a_garbled_document_is_quarantined_and_the_rest_lands(sample_dir, settings):
    (sample_dir / "mojibake.txt").write_text("Stat\ufffd\ufffd \x07\x08\ufffd report \ufffd\ufffd\ufffd\x01\x02 " * 40)
    summary = run(sample_dir, settings)
    assert (summary["indexed"], summary["quarantined"], summary["failed"]) == (7, 1, 2)
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in Ledger(settings.resolved_ledger_url).rows(settings.collection)}
    assert rows["mojibake.txt"]["state"] == "quarantined" and rows["mojibake.txt"]["reason"] == "garbled_text"
    assert milvus_store(settings).count(rows["mojibake.txt"]["doc_id"]) == 0 and summary["reconciled"]
    # The text gate runs before the model: the garbled document's chunks were never embedded.
    assert summary["chunks_embedded"] == summary["chunks_written"]


def test_too_many_quarantined_documents_fail_the_run_and_change_nothing_searchable(sample_dir, settings, monkeypatch):
    (sample_dir / "river-report.txt").write_text(long_text(30))
    first = run(sample_dir, settings)
    before = {(r["chunk_id"], r["text"]) for r in milvus_store(settings).rows(None, ["chunk_id", "text"])}
    ledger_before = Ledger(settings.resolved_ledger_url).rows(settings.collection)
    (sample_dir / "river-report.txt").write_text(long_text(30, topic="estuary"))  # a good new version ...
    (sample_dir / "new-notes.txt").write_text(long_text(5, topic="harbour"))  # ... and a good new document
    (sample_dir / "zz-mojibake.txt").write_text("\ufffd\x01\x02\ufffd garbage \ufffd\ufffd\x03 " * 50)
    monkeypatch.setenv("MILLRACE_MAX_QUARANTINED_FRACTION", "0.3")  # 1 of 3 processed documents is over it
    monkeypatch.setenv("MILLRACE_DOCS_PER_BATCH", "1")  # the good ones are staged before the bad one is seen
    strict = load_settings(collection=settings.collection)
    with pytest.raises(QualityGateError, match="nothing was changed"):
        run(sample_dir, strict)
    after = {(r["chunk_id"], r["text"]) for r in milvus_store(settings).rows(None, ["chunk_id", "text"])}
    assert after == before and milvus_store(settings).count() == first["chunks_written"]
    assert Ledger(settings.resolved_ledger_url).rows(settings.collection) == ledger_before


def test_a_mismatch_between_milvus_and_the_ledger_fails_loudly(sample_dir, settings):
    run(sample_dir, settings)
    store = milvus_store(settings)
    victim = sorted(next(iter(store.chunk_ids().values())))[0]
    store.delete_ids([victim])  # behind the ledger's back
    with pytest.raises(ReconciliationError, match="Re-run the ingest"):
        run(sample_dir, settings)
    last = Ledger(settings.resolved_ledger_url).last_run(settings.collection)
    assert last["reconciled"] is False and last["milvus_count"] == last["ledger_count"] - 1


def cli(args, env, check=True):
    done = subprocess.run([str(Path(sys.executable).parent / "millrace"), *args], env=env, capture_output=True,
                          text=True, timeout=900)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill-after-upsert", "kill-during-commit"])
def test_sigkill_between_new_write_and_old_removal_loses_nothing_and_converges(sample_dir, tmp_path, prefect_api,
                                                                                fault):
    env = {**os.environ, "MILLRACE_HOME": str(tmp_path / "home"), "PREFECT_API_URL": prefect_api}
    env.pop("MILLRACE_DASK_ADDRESS", None)
    report = sample_dir / "river-report.txt"
    report.write_text(long_text(40))
    cli(["ingest", str(sample_dir)], env)
    report.write_text(long_text(40, topic="reservoir"))  # every chunk of this document changes

    # The crash point comes with the test hooks (tests/hooks/faults.py), which the subprocess's sitecustomize installs.
    hooks = str(HOOKS_SITE) + os.pathsep + env.get("PYTHONPATH", "")
    crashed = cli(["ingest", str(sample_dir)], {**env, "MILLRACE_TEST_CRASH_AT": fault, "PYTHONPATH": hooks},
                  check=False)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    hits = json.loads(cli(["search", "gauge at station 12 above normal", "--json"], env).stdout)["hits"]
    assert any(h["source_uri"].endswith("river-report.txt") for h in hits)  # still searchable after the crash

    cli(["ingest", str(sample_dir)], env)
    clean_env = {**env, "MILLRACE_HOME": str(tmp_path / "clean")}
    cli(["ingest", str(sample_dir)], clean_env)
    ids = []
    for e in (env, clean_env):
        status = json.loads(cli(["status", "--json"], e).stdout)
        assert status["last_run"]["reconciled"] is True
        ids.append(sorted((d["doc_id"], d["state"], d["chunks"]) for d in status["documents"]))
    assert ids[0] == ids[1]
    from millrace.config import Settings
    from millrace.index.store import MilvusStore

    stores = [MilvusStore(Settings(home=tmp_path / h)) for h in ("home", "clean")]
    assert stores[0].chunk_ids() == stores[1].chunk_ids()
    assert not any("reservoir" not in t and "river report" in t for t in _texts(stores[0]))


def _texts(store):
    return [r["text"] for r in store.rows(None, ["text"])]
