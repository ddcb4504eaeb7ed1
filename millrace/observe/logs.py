"""Log records that say which trace, request and ingest run they belong to, as text or as JSON lines.

`ContextFilter` stamps every record with trace_id/span_id (the current OpenTelemetry span), request_id (the
serving request, set by serving.app's middleware) and run_id (millrace.observe.telemetry.run_scope, else the Prefect flow run
of the current context when Prefect is loaded; this module never imports it). `configure` puts the filter, and with
MILLRACE_LOG_FORMAT=json python-json-logger's formatter, on the process's console handlers; Prefect's handler that
ships logs to its API keeps its own format."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from opentelemetry import trace

from millrace.observe.telemetry import run_id_var

request_id_var: ContextVar[str] = ContextVar("millrace_request_id", default="")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s [trace=%(trace_id)s run=%(run_id)s request=%(request_id)s]"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s %(span_id)s %(run_id)s %(request_id)s"


def _prefect_run_id() -> str:
    ctx = sys.modules.get("prefect.context")
    if ctx is None:
        return ""
    try:
        run = getattr(ctx.FlowRunContext.get(), "flow_run", None)
        return str(run.id) if run is not None else ""
    except Exception:  # a half-torn-down context at exit: no run id rather than no log line
        return ""


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if not getattr(record, "trace_id", None):
            record.trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else ""
            record.span_id = f"{ctx.span_id:016x}" if ctx.is_valid else ""
        if not getattr(record, "run_id", None):
            record.run_id = run_id_var.get() or _prefect_run_id()
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get()
        return True


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    return logging.Formatter(TEXT)


def configure(settings, loggers: tuple[str, ...] = ("", "prefect"), console: bool = False) -> None:
    """The filter, and the format, on the console handlers of these loggers. With `console` (a process of our own:
    `millrace serve`, the metrics exporter) the root gets a handler if it has none, so millrace's records are printed;
    handlers someone else set up keep their text format (the filter's fields are there for theirs to use) unless
    JSON is asked for. Idempotent."""
    fmt = settings.log_format.lower()
    root, ours = logging.getLogger(), None
    if console and not root.handlers:
        ours = logging.StreamHandler()
        root.addHandler(ours)
        if logging.getLogger("millrace").level == logging.NOTSET:  # ours at INFO; libraries' chatter stays out
            logging.getLogger("millrace").setLevel(logging.INFO)
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.StreamHandler):  # Prefect's API handler ships records, not lines
                continue
            if not any(isinstance(f, ContextFilter) for f in handler.filters):
                handler.addFilter(ContextFilter())
            if fmt == "json" or handler is ours:
                handler.setFormatter(formatter(fmt))
