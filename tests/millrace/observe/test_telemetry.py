"""Tracing set-up: OTLP/HTTP when an endpoint is configured (received by a loopback HTTP server and decoded with
opentelemetry-proto), JSON lines otherwise, rotated; JSON logs carrying the trace and run ids. Each case runs in a
fresh interpreter: a process installs its tracer provider once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

SCRIPT = """
import logging, io, json, sys
from millrace.config import load_settings
from millrace.observe import logs, telemetry
settings = load_settings()
print(telemetry.setup("millrace-test", settings))
stream = io.StringIO()
logger = logging.getLogger("millrace.test")
logger.addHandler(logging.StreamHandler(stream)); logger.setLevel(logging.INFO)
logs.configure(settings, loggers=("millrace.test",))
with telemetry.run_scope("run-42"), telemetry.span("outer", doc_id="d1", skipped=None):
    headers = telemetry.carrier()
    with telemetry.span("inner", chunks=3):
        logger.info("hello")
with telemetry.attached(headers), telemetry.span("remote"):
    pass
print(json.dumps(headers))
print(stream.getvalue().strip())
print(telemetry.flush())
"""


def run(tmp_path, **env) -> list[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MILLRACE_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env={**base, **env}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_without_an_endpoint_spans_are_json_lines_in_home_one_trace_and_logs_carry_its_ids(tmp_path):
    kind, headers, line, flushed = run(tmp_path, MILLRACE_LOG_FORMAT="json")
    assert kind == "file" and flushed == "True"
    spans = {s["name"]: s for s in map(json.loads, (tmp_path / "home" / "traces" / "spans.jsonl").read_text()
                                       .splitlines())}
    outer, inner, remote = spans["outer"], spans["inner"], spans["remote"]
    assert outer["parent_id"] is None and inner["parent_id"] == outer["span_id"]
    assert remote["parent_id"] == outer["span_id"]  # attached from the W3C carrier, as a worker does
    assert {s["trace_id"] for s in spans.values()} == {outer["trace_id"]}
    assert outer["attributes"] == {"millrace.doc_id": "d1", "millrace.run_id": "run-42"}
    assert outer["service"] == "millrace-test" and json.loads(headers)["traceparent"].split("-")[1] == \
        outer["trace_id"]
    record = json.loads(line)
    assert record["message"] == "hello" and record["level"] == "INFO"
    assert (record["trace_id"], record["span_id"], record["run_id"]) == (inner["trace_id"], inner["span_id"],
                                                                         "run-42")


def test_traces_off_installs_nothing_and_the_file_rotates(tmp_path):
    kind, headers, line, _ = run(tmp_path, MILLRACE_TRACES="off")
    assert kind == "off" and json.loads(headers) == {} and line == "hello"  # text: the handler keeps its format
    assert not (tmp_path / "home" / "traces").exists()
    for _ in range(3):
        run(tmp_path, MILLRACE_TRACES_MAX_MB="0.0001")  # ~100 bytes: every run after the first rotates
    traces = tmp_path / "home" / "traces"
    assert sorted(p.name for p in traces.iterdir()) == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2"]


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "MILLRACE_OTLP_ENDPOINT"])
def test_a_configured_endpoint_gets_the_spans_over_otlp_http(tmp_path, variable):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kind, *_ = run(tmp_path, **{variable: f"http://127.0.0.1:{server.server_port}"},
                       MILLRACE_S3_SECRET="s3-secret-value")
    finally:
        server.shutdown()
    assert kind == "otlp" and not (tmp_path / "home" / "traces").exists()
    assert Receiver.received and all(p == "/v1/traces" and t == "application/x-protobuf"
                                     for p, t, _ in Receiver.received)
    spans, services = {}, set()
    for _, _, body in Receiver.received:
        request = ExportTraceServiceRequest.FromString(body)
        assert b"s3-secret-value" not in body
        for rs in request.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            spans.update({s.name: s for ss in rs.scope_spans for s in ss.spans})
    assert services == {"millrace-test"} and {"outer", "inner", "remote"} <= set(spans)
    assert spans["inner"].parent_span_id == spans["outer"].span_id
    assert spans["inner"].trace_id == spans["outer"].trace_id == spans["remote"].trace_id
