import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.ingest import ingest
from millrace.clients import milvus_store
from millrace.config import load_settings
from millrace.search import Retriever
from tests.conftest import free_port, wait_port

pytestmark = pytest.mark.integration


def run(source, settings, **kwargs):
    return ingest(source=str(source), collection=settings.collection, **kwargs)


def test_ingest_rerun_edit_and_delete(sample_dir, settings):
    first = run(sample_dir, settings)
    assert (first["seen"], first["indexed"], first["failed"]) == (9, 7, 2)
    assert {f["reason"] for f in first["failures"]} == {"empty", "no_text"}
    store = milvus_store(settings)
    assert store.count() == first["chunks_written"] == first["ledger_chunks"] > 0 and first["reconciled"]
    hits = Retriever(settings, store).search("How many days of paid leave do new employees get?", k=3)
    assert hits[0].source_uri.endswith("employee-handbook.pdf") and hits[0].page == 2

    again = run(sample_dir, settings)
    assert (again["processed"], again["skipped"], again["chunks_written"]) == (0, 9, 0)
    assert store.count() == first["chunks_written"]

    (sample_dir / "release-notes.md").write_text("# Release notes\n\nThe dashboard now speaks Welsh.\n")
    (sample_dir / "travel-policy.odt").unlink()
    third = run(sample_dir, settings)
    assert (third["processed"], third["indexed"], third["deleted"], third["skipped"]) == (1, 1, 1, 7)
    assert third["reconciled"]
    uris = {h.source_uri for h in Retriever(settings, store).search("mileage per kilometre", k=20)}
    assert not any(u.endswith("travel-policy.odt") for u in uris)
    assert any("Welsh" in h.text for h in Retriever(settings, store).search("dashboard language Welsh", k=3))


def test_ingest_from_s3_prefix(moto_s3, sample_dir, settings, monkeypatch):
    import boto3

    monkeypatch.setenv("MILLRACE_S3_ENDPOINT_URL", moto_s3)
    monkeypatch.setenv("MILLRACE_S3_KEY", "testing")
    monkeypatch.setenv("MILLRACE_S3_SECRET", "testing")
    monkeypatch.setenv("MILLRACE_S3_REGION", "us-east-1")
    s3 = boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="docs")
    for path in sample_dir.iterdir():
        s3.put_object(Bucket="docs", Key=f"team/{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket="docs", Key="other/ignored.md", Body=b"# not under the prefix")
    settings = load_settings(collection=settings.collection)

    first = run("s3://docs/team", settings)
    assert (first["seen"], first["indexed"], first["failed"]) == (9, 7, 2)
    hit = Retriever(settings, milvus_store(settings)).search("Which port does the turbine controller listen on?", k=1)[0]
    assert hit.source_uri == "s3://docs/team/controller-faq.html"

    s3.delete_object(Bucket="docs", Key="team/controller-faq.html")
    second = run("s3://docs/team", settings)
    assert (second["deleted"], second["processed"]) == (1, 0)
    assert milvus_store(settings).count(hit.doc_id) == 0


@pytest.fixture()
def loopback_dask(prefect_api):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    wait_port(port)
    address = f"tcp://127.0.0.1:{port}"
    for name in ("w1", "w2"):
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--name", name,
                                       "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    client = Client(address)
    client.wait_for_workers(2, timeout=60)
    yield address, client
    client.close()
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        p.wait(30)


def test_same_flow_on_an_existing_scheduler_with_two_workers(loopback_dask, sample_dir, settings, monkeypatch,
                                                             tmp_path):
    address, client = loopback_dask
    monkeypatch.setenv("MILLRACE_DASK_ADDRESS", address)
    monkeypatch.setenv("MILLRACE_DOCS_PER_BATCH", "1")
    settings = load_settings(collection=settings.collection)

    def _jvm_started() -> bool:  # defined here: cloudpickle sends it by value (workers cannot import tests/)
        import jpype

        return jpype.isJVMStarted()

    # Records first: they need no Tika, so the run's warm-up starts no JVM on the workers.
    records = tmp_path / "notes + café #1.jsonl"
    records.write_text("".join(f'{{"_id": "r{i}", "title": "Note {i}", "text": "Gauge {i} read {i * 7} cm."}}\n'
                               for i in range(4)), encoding="utf-8")
    assert run(records, load_settings(collection=settings.collection + "_r"))["indexed"] == 4
    assert set(client.run(_jvm_started).values()) == {False}
    summary = run(sample_dir, settings)
    assert (summary["indexed"], summary["failed"]) == (7, 2) and summary["reconciled"]
    assert set(client.run(_jvm_started).values()) == {True}

    def models_loaded():
        import millrace.documents.embed

        return len(millrace.documents.embed._models)

    per_worker = client.run(models_loaded)
    assert len(per_worker) == 2 and all(n == 1 for n in per_worker.values()), per_worker


def test_unreachable_milvus_fails_the_run_with_a_clear_error(sample_dir, settings, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("MILLRACE_MILVUS_URI", f"http://127.0.0.1:{free_port()}")
    assert main(["ingest", str(sample_dir), "--collection", settings.collection]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("millrace: error: cannot reach Milvus at http://127.0.0.1:") and "make server" in err
    assert "after 3 tries" in err  # MILLRACE_RETRY_DELAYS has two waits: three attempts, then this message


@pytest.mark.slow
def test_milvus_server_and_lite_hold_the_same_primary_keys(milvus_server, sample_dir, settings, monkeypatch):
    lite = run(sample_dir, settings)
    lite_ids = milvus_store(settings).chunk_ids()
    monkeypatch.setenv("MILLRACE_MILVUS_URI", milvus_server)
    monkeypatch.setenv("MILLRACE_HOME", str(settings.home) + "-server")  # its own ledger
    server_settings = load_settings(collection=settings.collection)
    summary = run(sample_dir, server_settings)
    assert summary["reconciled"] and summary["chunks_written"] == lite["chunks_written"]
    server_store = milvus_store(server_settings)
    assert server_store.index_type == "HNSW"
    assert milvus_store(settings).has_full_text() and not server_store.has_full_text()  # BM25 needs Milvus >= 2.5
    assert server_store.chunk_ids() == lite_ids
    rerun = run(sample_dir, server_settings)
    assert rerun["processed"] == 0 and server_store.count() == lite["chunks_written"]
