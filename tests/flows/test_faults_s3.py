"""S3 faults against the real moto server: connections refused and reset while a run lists, and objects uploaded,
overwritten and deleted while a run lists and reads them. The network faults come from a TCP proxy in front of
moto (moto keeps its state in memory, so it is never killed)."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import select

from flows.ingest import ingest
from millrace import clients
from millrace.config import load_settings
from millrace.documents.records import doc_id_for
from millrace.ledger.book import runs
from millrace.uris import s3_uri
from tests.faultproxy import FaultProxy
from tests.flows.test_mirror import rows, words

pytestmark = pytest.mark.integration

NAMES = ["audit report.txt", "café notes #2.txt", "a+b = c.md", "Übersicht 50% + mehr.txt", "sub dir/naïve #x.md"]
NAME = st.text(alphabet="abcé ü#+%&()", min_size=1, max_size=8).map(str.strip).filter(bool)


def run_states(settings) -> list[str]:
    """The ledger's run states of a collection, oldest first (its runs are recorded under its physical name)."""
    with clients.ledger(settings).engine.connect() as conn:
        return list(conn.execute(select(runs.c.state).where(runs.c.collection.startswith(settings.collection))
                                 .order_by(runs.c.id)).scalars())


def clean_rows(source: str, settings) -> set:
    """The primary keys (and texts) a fault-free run of the same source gives, in a collection of its own."""
    clean = settings.model_copy(update={"collection": f"clean_{uuid.uuid4().hex[:8]}"})
    summary = ingest(source=source, collection=clean.collection)
    assert summary["reconciled"]
    return rows(clean)


@pytest.fixture()
def proxied(s3_env, moto_s3, monkeypatch):
    """The S3 endpoint of this test's runs behind a fault proxy; the test's own boto3 client goes to moto."""
    url = urlsplit(moto_s3)
    with FaultProxy((url.hostname, url.port)) as proxy:
        monkeypatch.setenv("MILLRACE_S3_ENDPOINT_URL", proxy.url)
        yield proxy


def fill(s3, bucket: str, n: int) -> dict[str, str]:
    s3.create_bucket(Bucket=bucket)
    bodies = {f"in box/{i:02d} {NAMES[i % len(NAMES)]}": words(i) for i in range(n)}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
    return bodies


def test_connections_reset_then_refused_while_listing(s3_env, proxied, settings, monkeypatch):
    bucket = f"flaky-{uuid.uuid4().hex[:6]}"
    fill(s3_env, bucket, 6)
    source = f"s3://{bucket}/in box"
    # Every listing request is cut, then every connection reset for 2 s: the retries (about 1 s, then 2 s) ride it.
    monkeypatch.setenv("MILLRACE_RETRY_DELAYS", "[1, 2, 3]")
    s = load_settings(collection=settings.collection)
    tripped = proxied.trip_on(b"list-type=2", "reset", 2.0)
    summary = ingest(source=source, collection=s.collection)
    assert tripped.is_set() and summary["reconciled"] and (summary["seen"], summary["indexed"]) == (6, 6)
    assert rows(s) == clean_rows(source, s)

    # An outage longer than the retries: the run fails saying what it could not do, changes nothing, and the run is
    # marked failed in the ledger; the next run (after the outage) converges.
    s3_env.put_object(Bucket=bucket, Key="in box/late + new.txt", Body=words(40).encode())
    s3_env.delete_object(Bucket=bucket, Key="in box/00 audit report.txt")
    before = rows(s)
    monkeypatch.setenv("MILLRACE_RETRY_DELAYS", "[0.2, 0.4]")
    proxied.set_mode("refuse")
    try:
        with pytest.raises(Exception) as failed:
            ingest(source=source, collection=s.collection)
    finally:
        proxied.set_mode("pass")
    assert f"cannot list {s3_uri(bucket, 'in box')} at {proxied.url} after 3 tries" in str(failed.value)
    assert rows(s) == before and run_states(s)[-1] == "failed"
    again = ingest(source=source, collection=s.collection)
    assert again["reconciled"] and (again["deleted"], again["indexed"]) == (1, 1)
    assert run_states(s)[-1] == "done" and rows(s) == clean_rows(source, s)


OPS = st.lists(st.tuples(st.sampled_from(["new", "overwrite", "delete"]), st.integers(0, 10**6), NAME),
               min_size=6, max_size=14)


@pytest.mark.slow
def test_objects_changing_while_a_run_lists_and_reads_them(s3_env, proxied, settings, monkeypatch):
    monkeypatch.setenv("MILLRACE_TRANSIENT_BACKOFF_S", "0")  # the quiet run retries what the race made fail
    monkeypatch.setenv("MILLRACE_DOCS_PER_BATCH", "4")  # many small batches: reads spread over the run

    @given(ops=OPS)
    @hsettings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
    def race(ops):
        s = load_settings(collection=f"r_{uuid.uuid4().hex[:8]}")
        bucket = f"race-{uuid.uuid4().hex[:6]}"
        source = f"s3://{bucket}/in box"
        live = fill(s3_env, bucket, 10)
        bodies = {hashlib.md5(b.encode()).hexdigest(): b for b in live.values()}  # every content ever uploaded
        assert ingest(source=source, collection=s.collection)["indexed"] == 10
        before, touched = rows(s), set()
        for i, key in enumerate(sorted(live)):  # every object changed: the racing run lists them all to be read
            live[key] = words(i + 500)
            bodies[hashlib.md5(live[key].encode()).hexdigest()] = live[key]
            s3_env.put_object(Bucket=bucket, Key=key, Body=live[key].encode())

        def mutate():
            for n, (op, pick, name) in enumerate(ops):
                keys = sorted(live)
                if op == "new" or not keys:
                    key = f"in box/{name} {n}.txt"
                else:
                    key = keys[pick % len(keys)]
                touched.add(key)
                if op == "delete" and keys:
                    s3_env.delete_object(Bucket=bucket, Key=key)
                    live.pop(key)
                    continue
                body = words(pick % 1000 + 100) + f" Version {n}."
                bodies[hashlib.md5(body.encode()).hexdigest()] = body
                s3_env.put_object(Bucket=bucket, Key=key, Body=body.encode())
                live[key] = body
                time.sleep(0.05)

        listing = proxied.trip_on(b"list-type=2", "pass", 0)
        mutator = threading.Thread(target=lambda: listing.wait(60) and mutate(), daemon=True)
        mutator.start()
        racing = ingest(source=source, collection=s.collection)
        mutator.join(60)
        proxied.trips.clear()
        assert racing["reconciled"] and not mutator.is_alive()

        # Nothing indexed under a wrong fingerprint: each document's text is the content its ledger ETag names.
        after = rows(s)
        ledger = clients.ledger(s).rows_for(s.collection, {d for d, _, _ in after})
        for doc_id, _, text in after:
            if ledger[doc_id]["state"] == "indexed":  # a failed one serves its previous version, whatever was listed
                assert text.strip() in bodies[ledger[doc_id]["fingerprint"]], (ledger[doc_id]["source_uri"], text)
        # Nothing already indexed was lost: untouched objects hold their listed version, overwritten ones a version.
        for key in set(live) - touched:
            assert {t for d, _, t in after if d == doc_id_for(s3_uri(bucket, key))} == {live[key]}, key
        assert {doc_id_for(s3_uri(bucket, k)) for k in touched & set(live) if any(
            r[0] == doc_id_for(s3_uri(bucket, k)) for r in before)} <= {r[0] for r in after}

        quiet = ingest(source=source, collection=s.collection)
        assert quiet["reconciled"] and rows(s) == clean_rows(source, s)
        assert {uri for uri in (r["source_uri"] for r in clients.ledger(s).rows_for(
            s.collection, {d for d, _, _ in rows(s)}).values())} == {s3_uri(bucket, k) for k in live}
        clients.milvus_store(s).client.drop_collection(s.collection)

    race()
