"""The serving app: `create_app(settings)` builds the FastAPI app; its lifespan builds the services once.

Layers: routes (serving.routes) translate HTTP; services (retrieval, answering) do the work; clients (Milvus, the
model, the ledger, Redis from millrace.clients; the LLM from serving.llm) talk to the systems. /health is liveness
and always open; /ready says whether Milvus, the collection and the LLM can serve; /metrics is Prometheus'. None of
the three is rate limited (serving.routes.probed/scraped)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from anyio import to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from millrace import clients
from millrace.config import ConfigError
from millrace.observe import telemetry
from millrace.observe.logs import request_id_var
from millrace.retry import is_transient
from serving import responses, routes, source_list as sources
from serving.answering import AnswerService
from serving.cache import make_cache
from serving.config import ServeSettings
from serving.errors import ServingError
from serving.llm import LLMClient
from serving.metrics import Metrics
from serving.retrieval import RetrievalService, gather_ready
from serving.security import KeyRing, RateLimiter

log = logging.getLogger("millrace.serving")
access = logging.getLogger("millrace.access")
STATIC = Path(__file__).parent / "static"
Background = Callable[[threading.Event], None]
BACKGROUND_STOP_S = 60.0


@dataclass
class Services:
    settings: ServeSettings
    metrics: Metrics
    retrieval: RetrievalService
    answers: AnswerService
    keys: KeyRing
    limiter: RateLimiter
    scrapers: KeyRing  # the scrape token of /metrics (none: /metrics is open)
    started: int


def build_services(settings: ServeSettings) -> Services:
    """Everything a request needs, built once: opening Milvus here also makes this process the owner of a Lite file."""
    ledger = clients.ledger(settings)
    metrics = Metrics(freshness=lambda: ledger.freshness(RetrievalService.serving_collection(settings)),
                      ledger=lambda: ledger)
    retrieval = RetrievalService(settings, metrics, make_cache(settings))
    store = retrieval.retriever.store
    if store.exists():
        store.load()  # the first search must not pay for loading the collection
    llm = LLMClient(settings) if settings.llm_url else None
    return Services(settings, metrics, retrieval, AnswerService(settings, retrieval, llm, metrics),
                    KeyRing.of_users(settings), RateLimiter(settings), KeyRing.of_scrapers(settings),
                    int(time.time()))


class BodyLimit:
    """413 for a body over the limit, whether it declares its length or streams it chunked; also stamps every
    response with a request id, records its latency by route and status, traces it (a server span, continuing a
    caller's W3C traceparent) and writes its access log line, both carrying the request id."""

    def __init__(self, app, max_bytes: int, metrics_of):
        self.app, self.max_bytes, self.metrics_of = app, max_bytes, metrics_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = (next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
               or uuid.uuid4().hex)[:128]
        caller = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                  if k in (b"traceparent", b"tracestate")}
        token, t0, status = request_id_var.set(rid), time.perf_counter(), [500]
        with telemetry.tracer.start_as_current_span(
                f"{scope['method']} request", context=propagate.extract(caller) if caller else None,
                kind=SpanKind.SERVER, attributes={"http.request.method": scope["method"],
                                                  "millrace.request_id": rid}) as span:
            try:
                await self._handle(scope, receive, send, rid, status)
            finally:
                # One place for what every request leaves behind: its latency metric, span and access line.
                elapsed, route = time.perf_counter() - t0, _route(scope)
                metrics = self.metrics_of()
                if metrics is not None:
                    metrics.requests.labels(route, str(status[0])).observe(elapsed)
                span.update_name(f"{scope['method']} {route}")
                span.set_attributes({"http.route": route, "http.response.status_code": status[0]})
                if status[0] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                access.info("%s %s %d %.1fms", scope["method"], route, status[0], elapsed * 1000,
                            extra={"method": scope["method"], "route": route, "status": status[0],
                                   "duration_ms": round(elapsed * 1000, 3)})
                request_id_var.reset(token)

    async def _handle(self, scope, receive, send, rid: str, status: list[int]):
        async def stamped(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(stamped)
        if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_bytes:
                    return await self._too_large(stamped)
            replayed = [{"type": "http.request", "body": body, "more_body": False}]

            async def replay():
                return replayed.pop() if replayed else await receive()

            return await self.app(scope, replay, stamped)
        return await self.app(scope, receive, stamped)

    async def _too_large(self, send):
        response = JSONResponse(ServingError(413, "too_large", f"request body over {self.max_bytes} bytes "
                                             "(MILLRACE_MAX_BODY_BYTES)").body(), status_code=413)
        await response({"type": "http"}, None, send)


def _route(scope) -> str:
    """The route's template (bounded label values), never the raw path."""
    route = scope.get("route")
    return getattr(route, "path", None) or ("static" if scope["path"].startswith("/static") else "other")


def start_background(work: Background) -> tuple[threading.Event, threading.Thread]:
    """Run `work(stop)` in a thread (after the services: they opened Milvus, so it shares this process's client)."""
    stop = threading.Event()

    def run():
        try:
            work(stop)
        except Exception:  # the API keeps serving what is indexed; the log says why the index stopped following
            log.exception("background work stopped")

    thread = threading.Thread(target=run, name="serve background", daemon=True)
    thread.start()
    return stop, thread


def create_app(settings: ServeSettings, background: Background | None = None) -> FastAPI:

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.services = await to_thread.run_sync(build_services, settings)
        if not app.state.services.keys.enabled:
            log.warning("no API keys configured (MILLRACE_API_KEYS): the API is open to anyone who can reach it")
        elif not app.state.services.scrapers.enabled:
            log.info("/metrics is open without a key (the Prometheus convention); set MILLRACE_METRICS_TOKEN to "
                     "require a scrape token")
        worker = start_background(background) if background is not None else None
        try:
            yield
        finally:
            if worker is not None:
                stop, thread = worker
                stop.set()  # a drain ends after its round: the index is left consistent, the rest stays queued
                await to_thread.run_sync(thread.join, BACKGROUND_STOP_S)
                if thread.is_alive():
                    log.warning("background work still running after %.0fs; exiting without it", BACKGROUND_STOP_S)
            svc = app.state.services
            svc.retrieval.close()
            if svc.answers.llm is not None:
                await svc.answers.llm.close()

    # FastAPI's own telemetry is off: BodyLimit already makes the request's server span, its Prometheus metric and
    # its access line. FastAPI's would add a second server span and ~10 operation spans to every request (measured:
    # ~0.3 ms of a 1 ms cache hit, exported on a thread that takes the GIL from the requests).
    app = FastAPI(title="Millrace", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": False, "operation_spans": False, "metrics": False, "logs": False},
                  description="Search and cited answers over a Millrace index; OpenAI-compatible chat completions.")
    app.state.services = None
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       metrics_of=lambda: getattr(app.state.services, "metrics", None))

    def count(kind: str) -> None:
        if app.state.services is not None:
            app.state.services.metrics.errors.labels(kind).inc()

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError):
        count(exc.kind)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        count("invalid_request")
        errors = [{"loc": list(e.get("loc", [])), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return JSONResponse({"error": {"message": message, "type": "invalid_request", "code": 422},
                             "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Unknown paths, wrong methods, bodies the JSON decoder gives up on (nesting past its recursion limit):
        # the same OpenAI error shape as every other error, which the official clients parse.
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        count(kind)
        return JSONResponse(ServingError(exc.status_code, kind, str(exc.detail)).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # What reaches here is a backend that is down or misconfigured (503, with what to do), or a bug (500).
        if isinstance(exc, ConfigError) or is_transient(exc):
            count("backend_unavailable")
            return JSONResponse(ServingError(503, "backend_unavailable", str(exc)).body(), status_code=503,
                                headers={"Retry-After": "5"})
        count("internal")
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(ServingError(500, "internal", f"internal error ({type(exc).__name__})").body(),
                            status_code=500)

    app.include_router(routes.router)
    app.include_router(sources.router)
    app.include_router(responses.router)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", dependencies=[Depends(routes.probed)])
    async def ready(request: Request):
        svc = request.app.state.services
        checks, ok = {}, True
        try:
            checks["milvus"] = await gather_ready(svc.retrieval)
        except Exception as exc:
            ok, checks["milvus"] = False, {"error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"}
        if svc.answers.llm is None:
            checks["llm"] = {"configured": False}
        else:
            try:
                await asyncio.wait_for(svc.answers.llm.ready(), timeout=settings.llm_connect_timeout_s + 2)
                checks["llm"] = {"model": await svc.answers.llm.model()}
            except Exception as exc:
                ok, checks["llm"] = False, {"error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"}
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=[Depends(routes.scraped)])
    async def metrics(request: Request):
        registry = request.app.state.services.metrics.registry
        return Response(await to_thread.run_sync(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
