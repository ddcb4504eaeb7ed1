"""One ingest's trace, read back from the JSON-lines exporter: the Prefect flow span, its task spans, the batch on a
Dask worker process with its Tika and embed spans, the Milvus writes; one trace id throughout."""

import json

import pytest
from distributed import Client

from flows.ingest import ingest
from millrace.observe import telemetry

pytestmark = pytest.mark.integration


def read_spans(settings) -> list[dict]:
    path = telemetry.trace_file(settings)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_one_ingest_is_one_trace_from_flow_to_worker_spans(sample_dir, settings, dask_cluster):
    summary = ingest(source=str(sample_dir), collection=settings.collection)
    telemetry.flush()
    with Client(dask_cluster.scheduler_address) as client:
        client.run(telemetry.flush)  # the worker exports on its own schedule; the test cannot wait for it

    spans = read_spans(settings)
    flows = [s for s in spans if s["attributes"].get("prefect.run.type") == "flow"]
    assert len(flows) == 1, [s["name"] for s in spans]
    flow = flows[0]
    assert flow["parent_id"] is None and flow["service"] == "millrace-ingest"
    assert flow["attributes"]["prefect.run.id"] == summary["run_id"]
    trace = [s for s in spans if s["trace_id"] == flow["trace_id"]]
    assert len(trace) == len(spans), "every span of the run belongs to the flow's trace"
    by_id = {s["span_id"]: s for s in trace}

    def parent(s):
        return by_id.get(s["parent_id"])

    tasks = [s for s in trace if s["attributes"].get("prefect.run.type") == "task"]
    assert {s["name"].split(" ")[0] for s in tasks} >= {"list", "process", "write", "commit"}
    assert all(parent(s) is flow for s in tasks)

    batches = [s for s in tasks if s["name"].startswith("process batch")]
    assert batches and all(s["service"] == "millrace-worker" for s in batches)  # ran in the worker process
    assert sum(s["attributes"]["millrace.documents"] for s in batches) == summary["processed"]
    assert sum(s["attributes"]["millrace.chunks"] for s in batches) == summary["chunks_written"]
    assert all(s["attributes"]["millrace.run_id"] == summary["run_id"] for s in batches)

    extracts = [s for s in trace if s["name"] == "tika.extract"]
    embeds = [s for s in trace if s["name"] == "embed"]
    assert extracts and embeds
    assert all(parent(s) in batches and s["service"] == "millrace-worker" for s in extracts + embeds)
    assert any(s["attributes"].get("millrace.content_type") == "application/pdf" for s in extracts)
    assert sum(s["attributes"]["millrace.chunks"] for s in embeds) == summary["chunks_written"]

    writes = [s for s in trace if s["name"] == "milvus.stage_batch"]
    assert writes and all(parent(s)["name"].startswith("write batch") for s in writes)
    assert sum(s["attributes"]["millrace.chunks"] for s in writes) == summary["chunks_written"]
    commit = [s for s in trace if s["name"] == "milvus.commit"]
    assert len(commit) == 1 and parent(commit[0])["name"].startswith("commit")
