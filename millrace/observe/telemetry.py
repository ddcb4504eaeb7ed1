"""OpenTelemetry traces, set up once per process: the flow process, each Dask worker, `millrace serve`.

Prefect 3 already makes a span per flow run and task run on the global tracer provider (prefect.telemetry) and
carries the trace context to task runs on Dask workers through the flow run's labels; this module installs that
provider, so Prefect's spans and ours (Tika, embed, Milvus, serving stages) land in one trace. A batch also carries
a W3C traceparent of its own (`carrier`/`attached`), used on the worker only when no Prefect span is current
(Prefect's run telemetry switched off), so the worker's spans never start a trace of their own.

Where spans go: OTLP/HTTP when an endpoint is configured (MILLRACE_OTLP_ENDPOINT, or the standard
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT), otherwise JSON lines, one span a line, in
<home>/traces/spans.jsonl (rotated at MILLRACE_TRACES_MAX_MB, three old files kept). MILLRACE_TRACES=off installs
nothing: every span is then the API's no-op. Exports run on a background thread (BatchSpanProcessor) and their
failures are logged by the SDK, never raised into a run or a request."""

from __future__ import annotations

import json
import logging
import os
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

log = logging.getLogger("millrace.telemetry")
tracer = trace.get_tracer("millrace")
# The ingest run a line of work belongs to, outside Prefect's own context (the core, the serving process).
run_id_var: ContextVar[str] = ContextVar("millrace_run_id", default="")
_lock = threading.Lock()
_installed: dict[str, Any] = {}
_fallback: list[Callable[[], dict[str, str] | None]] = []


def fallback_parent(hook: Callable[[], dict[str, str] | None]) -> None:
    """Where a span that would start a trace of its own finds its parent instead: `hook` returns W3C headers or None.

    Prefect 3.8.8 starts a task run's span on a Dask worker as a root: its parent lookup finds the task's own run
    (labels without a traceparent), and in the worker thread no span is current. tasks.ingest hooks in the
    traceparent the flow sent with the batch, so the worker's task span, and everything under it, joins the run's
    trace. Only spans with no explicit context and no current span ask the hook: in the flow process none does."""
    _fallback[:] = [hook]


class _Tracer:
    def __init__(self, inner):
        self._inner = inner

    def _context(self, context):
        if context is None and _fallback and not trace.get_current_span().get_span_context().is_valid:
            try:
                headers = _fallback[0]()
            except Exception:  # a parent lookup must never cost the span, let alone the run
                headers = None
            if headers:
                return propagate.extract(headers)
        return context

    def start_span(self, name, context=None, *args, **kwargs):
        return self._inner.start_span(name, self._context(context), *args, **kwargs)

    def start_as_current_span(self, name, context=None, *args, **kwargs):
        return self._inner.start_as_current_span(name, self._context(context), *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class JsonLinesExporter:
    """Spans as JSON lines. Processes of one home (flow, workers) append to one file: each export is one O_APPEND
    write, so lines of different processes never interleave."""

    def __init__(self, directory: Path, max_bytes: int, keep: int = 3):
        self.directory, self.max_bytes, self.keep = Path(directory), max_bytes, keep
        self._warned = False

    @property
    def path(self) -> Path:
        return self.directory / "spans.jsonl"

    def export(self, spans: Sequence) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._rotate()
            data = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans).encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            return SpanExportResult.SUCCESS
        except OSError as exc:  # a full disk or a read-only home loses spans, never a run
            if not self._warned:
                self._warned = True
                log.warning("trace spans not written to %s: %s", self.path, exc)
            return SpanExportResult.FAILURE

    def _rotate(self) -> None:
        try:
            if self.path.stat().st_size < self.max_bytes:
                return
        except FileNotFoundError:
            return
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"spans.jsonl.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"spans.jsonl.{i + 1}"))
        os.replace(self.path, self.path.with_name("spans.jsonl.1"))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        pass


def span_record(span) -> dict[str, Any]:
    ctx, parent = span.get_span_context(), span.parent
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
            "parent_id": f"{parent.span_id:016x}" if parent is not None else None, "name": span.name,
            "kind": span.kind.name, "start_ns": span.start_time, "end_ns": span.end_time,
            "duration_ms": round(((span.end_time or 0) - (span.start_time or 0)) / 1e6, 3),
            "status": span.status.status_code.name, "service": span.resource.attributes.get("service.name"),
            "attributes": dict(span.attributes or {}),
            "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events]}


def otlp_endpoint(settings) -> str | None:
    """The OTLP/HTTP traces URL, or None for the file. The OTLP exporter reads the OTEL_* variables itself."""
    if settings.otlp_endpoint:
        base = settings.otlp_endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else base + "/v1/traces"
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ""
    return None


def setup(service: str, settings) -> str:
    """Install the tracer provider for this process (the first call decides the service and exporter); later calls
    only move the trace file to their settings' home. Returns where spans go: "otlp", "file", "off" or "external"
    (another provider was installed first, e.g. by opentelemetry-instrument; it is left alone)."""
    mode = settings.traces.lower()
    with _lock:
        if "kind" in _installed:
            if _installed["kind"] == "file" and mode != "off":
                _installed["exporter"].directory = Path(settings.home).resolve() / "traces"
            return _installed["kind"]
        if mode == "off":
            return "off"
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            _installed["kind"] = "external"
            return "external"
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        endpoint = otlp_endpoint(settings)
        if mode == "otlp" or (mode == "auto" and endpoint is not None):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter, kind = OTLPSpanExporter(endpoint=endpoint or None), "otlp"
        else:
            exporter = JsonLinesExporter(Path(settings.home).resolve() / "traces",
                                         int(settings.traces_max_mb * 1024 * 1024))
            kind = "file"
        class Provider(TracerProvider):
            def get_tracer(self, *args, **kwargs):
                return _Tracer(super().get_tracer(*args, **kwargs))

        provider = Provider(resource=Resource.create({"service.name": service,
                                                            "service.namespace": "millrace"}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _installed.update(kind=kind, exporter=exporter, provider=provider)
        return kind


def installed() -> bool:
    return "kind" in _installed


def flush(timeout_s: float = 10.0) -> bool:
    """Export what is queued now (tests, and before a process that may be killed hands back)."""
    provider = _installed.get("provider")
    return provider.force_flush(int(timeout_s * 1000)) if provider is not None else True


def trace_file(settings) -> Path:
    return Path(settings.home).resolve() / "traces" / "spans.jsonl"


def span(name: str, **attributes: Any):
    """A child span of the current one, with the run id of run_scope; None-valued attributes are left out. A no-op
    when tracing is off."""
    attributes.setdefault("run_id", run_id_var.get() or None)
    return tracer.start_as_current_span(name, attributes={f"millrace.{k}": v for k, v in attributes.items()
                                                          if v is not None})


def annotate(**attributes: Any) -> None:
    """Attributes on the current span (a Prefect run's, or ours); identifiers and counts only, never secrets."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({f"millrace.{k}": v for k, v in attributes.items() if v is not None})


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (traceparent), to send with work to another process."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


@contextmanager
def attached(headers: dict[str, str] | None) -> Iterator[None]:
    """Continue the sender's trace when nothing here already does (a Prefect task span is current on a worker
    whenever Prefect's run telemetry is on; then that span, itself a child of the flow's, is the parent)."""
    if not headers or trace.get_current_span().get_span_context().is_valid:
        yield
        return
    token = otel_context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def run_scope(run_id: str | None) -> Iterator[None]:
    """Mark the work inside as the given ingest run's: log records (millrace.observe.logs) and the current span carry it."""
    token = run_id_var.set(run_id or "")
    if run_id:
        trace.get_current_span().set_attribute("millrace.run_id", run_id)
    try:
        yield
    finally:
        run_id_var.reset(token)
