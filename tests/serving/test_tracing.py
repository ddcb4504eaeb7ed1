"""One answer's trace, read back from the JSON-lines exporter: the request span (continuing the caller's W3C
traceparent) with its embed, Milvus search and LLM generate spans, through the real vLLM server; the access log line
carries the same request id and trace id."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from millrace.observe import telemetry
from millrace.observe.logs import ContextFilter
from tests.serving.harness import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_an_answer_is_one_trace_request_embed_search_generate(index, vllm_server, caplog):
    settings = index[0].model_copy(update={"llm_url": vllm_server.url, "llm_model": vllm_server.model,
                                           "max_tokens": 8, "cache": False})
    telemetry.setup("millrace-serve", settings)  # this process's provider; the trace file is the index's home
    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.INFO, "millrace.access")
    with serve_app(settings) as url:
        r = httpx.post(f"{url}/v1/answer", json={"query": "How many days of paid leave?", "stream": False},
                       headers={"x-request-id": "req-trace-1", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
                       timeout=120)
    assert r.status_code == 200, r.text
    telemetry.flush()
    spans = [json.loads(line) for line in telemetry.trace_file(settings).read_text().splitlines()]
    ours = [s for s in spans if s["trace_id"] == TRACE]
    request = [s for s in ours if s["attributes"].get("millrace.request_id") == "req-trace-1"]
    assert len(request) == 1 and request[0]["kind"] == "SERVER"
    request = request[0]
    assert request["name"] == "POST /v1/answer" and request["parent_id"] == "00f067aa0ba902b7"
    assert request["attributes"]["http.response.status_code"] == 200
    # FastAPI 0.150 adds spans of its own (fastapi.endpoint, ...) between the request and the services' spans.
    below, grew = {request["span_id"]}, True
    while grew:
        more = {s["span_id"] for s in ours if s["parent_id"] in below} - below
        below, grew = below | more, bool(more)
    children = {s["name"]: s for s in ours if s["span_id"] in below - {request["span_id"]}}
    assert {"embed", "milvus.search", "llm.generate"} <= set(children), [s["name"] for s in ours]
    assert children["milvus.search"]["attributes"]["millrace.collection"] == r.json()["collection"]
    assert children["milvus.search"]["attributes"]["millrace.hits"] >= 1
    generate = children["llm.generate"]["attributes"]
    assert generate["millrace.completion_tokens"] == r.json()["usage"]["completion_tokens"] > 0
    # Stages in request order: the query is embedded, then searched, then the answer generated.
    assert children["embed"]["end_ns"] <= children["milvus.search"]["start_ns"] <= \
        children["milvus.search"]["end_ns"] <= children["llm.generate"]["start_ns"]

    lines = [rec for rec in caplog.records if rec.name == "millrace.access" and rec.request_id == "req-trace-1"]
    assert len(lines) == 1 and lines[0].trace_id == TRACE and lines[0].status == 200
    assert lines[0].route == "/v1/answer"
