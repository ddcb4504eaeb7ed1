"""Operations on the flows: queued S3 changes mirror exactly their objects, backfills by prefix and date, small
change sets processed in the flow's own process, freshness in the ledger, and `status --doc`."""

import os
import time
import uuid

import pytest

from flows.drain import drain
from flows.ingest import ingest
from millrace import clients
from millrace.config import load_settings
from millrace.documents.records import doc_id_for
from millrace.events.queue import from_s3
from millrace.events.s3 import S3Change
from millrace.observe.document_report import doc_report, format_doc
from millrace.search import Retriever
from millrace.uris import path_to_uri, s3_uri

pytestmark = pytest.mark.integration


def words(i: int) -> str:
    return (f"Report {i} counts {i * 17 % 89} barges through lock {i * 5 % 41} on the "
            f"{['north', 'south', 'east', 'west'][i % 4]} canal during the spring flood.")


@pytest.fixture()
def bucket(s3_env):
    name = f"ops-{uuid.uuid4().hex[:6]}"
    s3_env.create_bucket(Bucket=name)
    return s3_env, name


def queue_and_drain(settings, bucket: str, created=(), removed=()) -> dict:
    """What the relay or the SQS consumer does with a notification (queue it, routed to its source), then a drain."""
    notices = [S3Change(bucket=bucket, key=k, kind=kind, message_id=f"m-{i}")
               for i, (k, kind) in enumerate([(k, "created") for k in created] + [(k, "removed") for k in removed])]
    clients.change_queue(settings).put(from_s3(settings.collection, notices, settings.sources, "test"))
    return drain(collection=settings.collection, options={"drain_idle_s": 0})


def test_queued_changes_index_their_created_objects_delete_their_removed_ones_and_touch_nothing_else(
        bucket, settings):
    s3, name = bucket
    keys = ["in box/a report.txt", "in box/café #2.txt", "other/b+c.txt", "in box/untouched.txt"]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=name, Key=key, Body=words(i).encode())
    settings = load_settings(collection=settings.collection)
    first = queue_and_drain(settings, name, created=keys[:3])
    assert (first["changes"], first["done"]) == (3, 3)  # the untouched key was never named
    ledger = clients.ledger(settings)
    indexed = {r["source_uri"] for r in ledger.rows(settings.collection, ["indexed"])}
    assert indexed == {s3_uri(name, k) for k in keys[:3]}
    fresh = ledger.rows_for(settings.collection, [doc_id_for(s3_uri(name, keys[0]))])[doc_id_for(s3_uri(name, keys[0]))]
    assert fresh["indexed_at"] >= fresh["modified_at"] > 0 and fresh["fresh_s"] == pytest.approx(
        fresh["indexed_at"] - fresh["modified_at"], abs=0.01)

    s3.delete_object(Bucket=name, Key=keys[1])
    # A "created" change for a key deleted since is judged by the object's state now: gone, so deleted.
    queue_and_drain(settings, name, created=[keys[1]])
    hits = Retriever(settings, clients.milvus_store(settings)).search(words(1), k=10)
    assert all(h.source_uri != s3_uri(name, keys[1]) for h in hits)
    report = doc_report(settings, s3_uri(name, keys[1]))
    assert report["ledger"]["state"] == "deleted" and report["milvus_chunks"] == 0 and report["runs"]
    assert "deleted" in format_doc(report)


def test_configured_sources_limit_what_changes_may_index(bucket, settings, monkeypatch):
    s3, name = bucket
    for i, key in enumerate(["docs/in.txt", "private/out.txt"]):
        s3.put_object(Bucket=name, Key=key, Body=words(i).encode())
    monkeypatch.setenv("MILLRACE_SOURCES", f'["s3://{name}/docs"]')
    settings = load_settings(collection=settings.collection)
    out = queue_and_drain(settings, name, created=["docs/in.txt", "private/out.txt"])
    assert out["changes"] == 1  # the key outside every configured source was never queued
    assert {r["source_uri"] for r in clients.ledger(settings).rows(settings.collection)} == {
        s3_uri(name, "docs/in.txt")}


def test_a_backfill_by_prefix_and_date_processes_only_those_and_still_mirrors_deletions(tmp_path, settings):
    src = tmp_path / "share"
    (src / "2026 reports").mkdir(parents=True)
    (src / "2025 reports").mkdir()
    files = [src / "2026 reports" / "jan.txt", src / "2026 reports" / "old.txt", src / "2025 reports" / "dec.txt"]
    for i, f in enumerate(files):
        f.write_text(words(i))
    long_ago = time.time() - 400 * 86400
    os.utime(files[1], (long_ago, long_ago))
    out = ingest(source=str(src), collection=settings.collection, prefix="2026 reports/", since="2026-01-01")
    assert (out["seen"], out["processed"], out["skipped"]) == (2, 1, 1)  # old.txt: listed, not processed
    assert {r["source_uri"] for r in clients.ledger(settings).rows(settings.collection)} == {path_to_uri(files[0])}
    files[0].unlink()
    again = ingest(source=str(src), collection=settings.collection, prefix="2026 reports/", since="2026-01-01")
    assert again["deleted"] == 1  # `since` limits processing, never the deletion check


def test_a_small_change_set_runs_in_the_flow_process_without_a_cluster(tmp_path, settings, monkeypatch):
    monkeypatch.delenv("MILLRACE_DASK_ADDRESS")
    src = tmp_path / "few"
    src.mkdir()
    for i in range(3):
        (src / f"note {i}.txt").write_text(words(i))
    out = ingest(source=str(src), collection=settings.collection)
    assert out["indexed"] == 3 and "warm_up" in out["phase_seconds"] and "start_workers" not in out["phase_seconds"]
    assert out["reconciled"]
    top = Retriever(settings, clients.milvus_store(settings)).search(words(2), k=1)[0]
    assert top.source_uri == path_to_uri(src / "note 2.txt")
    report = doc_report(settings, str(src / "note 2.txt"))
    assert report["verdict"].startswith("searchable") and report["milvus_chunks"] == report["ledger_chunks"] > 0
    assert report["ledger"]["upload_to_searchable_s"] > 0
    missing = doc_report(settings, str(src / "never there.txt"))
    assert missing["ledger"] is None and "no run has listed it" in missing["verdict"]
