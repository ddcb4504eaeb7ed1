"""Text extraction with Apache Tika's real parsers: an in-process JVM (default) or a remote tika-server."""

from __future__ import annotations

import atexit
import glob
import hashlib
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from millrace.config import ConfigError, Settings
from millrace.records import Document, SourceObject
from millrace.retry import TransientError, is_transient, with_retries
from millrace.sources import display_name
from millrace.xhtml import XhtmlError, scrub, xhtml_to_pages

TIKA_VERSION = "3.3.1"


class ExtractError(Exception):
    """A per-document failure; `reason` is a short code, `detail` the parser's words."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class Extractor(Protocol):
    def extract(self, obj: SourceObject, data: bytes) -> Document: ...


def find_tika_jar(settings: Settings) -> Path:
    """The tika-app jar: MILLRACE_TIKA_JAR, else the one `millrace setup-tika` put beside the venv."""
    candidates = [settings.tika_jar] if settings.tika_jar else []
    candidates += sorted(glob.glob(os.path.join(sys.prefix, "share", "millrace", "tika-app-*.jar")))
    candidates += sorted(glob.glob(str(settings.home / "tika" / "tika-app-*.jar")))
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise ConfigError("no Tika jar found: run `millrace setup-tika` (or `make demo`), or set MILLRACE_TIKA_JAR "
                      "to a tika-app 3.x jar, or MILLRACE_TIKA_ENDPOINT to a tika-server")


_LINE_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")


def _field(value: Any, limit: int) -> str:
    """A metadata value as one bounded line: the first non-empty of a list (a tika-server's JSON may carry lists,
    numbers, null), control characters and line breaks made single spaces."""
    if isinstance(value, (list, tuple)):
        value = next((v for v in (_field(x, limit) for x in value) if v), "")
    if value is None or isinstance(value, (dict, bool)):
        return ""
    try:
        text = value[: limit * 4] if isinstance(value, str) else str(value)[:limit]
    except ValueError:  # an int beyond str()'s 4300 digits
        return ""
    return scrub(_LINE_BREAKS.sub(" ", text)).strip()[:limit].strip()


def _page_count(value: Any) -> int:
    text = _field(value, 32).split(",")[0].strip()
    # ASCII digits only: "²".isdigit() is true and int() refuses it; a count beyond any real document is noise.
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0


def _title(meta: dict[str, Any], obj: SourceObject) -> str:
    return _field(meta.get("dc:title"), 500) or _field(meta.get("title"), 500) or _field(display_name(obj.uri), 500)


def build_document(obj: SourceObject, data: bytes, xhtml: str, meta: dict[str, Any]) -> Document:
    """Shared by both backends: XHTML + metadata -> Document, or ExtractError when there is no text."""
    try:
        pages = xhtml_to_pages(xhtml)
    except XhtmlError as exc:
        raise ExtractError("corrupt", str(exc)) from None
    content_type = _field(meta.get("Content-Type"), 1000).split(";")[0].strip()[:255]
    if not any(p.text for p in pages):
        parsed_by = meta.get("X-TIKA:Parsed-By")
        parsed_by = parsed_by if isinstance(parsed_by, list) else [parsed_by]
        if any("EmptyParser" in _field(p, 1000) for p in parsed_by) or content_type == "application/octet-stream":
            raise ExtractError("unsupported", f"no Tika parser for content type {content_type or 'unknown'}")
        hint = " (image-only or scanned? OCR is off)" if content_type.startswith(("application/pdf", "image/")) else ""
        raise ExtractError("no_text", f"{content_type}: no extractable text{hint}")
    page_count = meta.get("xmpTPg:NPages") or meta.get("meta:page-count") or meta.get("meta:slide-count") or 0
    keep = {k: ", ".join(filter(None, (_field(x, 500) for x in v))) if isinstance(v, list) else v
            for k, v in meta.items() if k in ("dc:creator", "dcterms:created", "dcterms:modified",
                                              "Content-Encoding", "dc:subject")}
    return Document(
        doc_id=obj.doc_id, source_uri=obj.uri, fingerprint=obj.fingerprint,
        content_hash=hashlib.sha256(data).hexdigest(), content_type=content_type,
        title=_title(meta, obj), language=_field(meta.get("dc:language"), 16),
        page_count=_page_count(page_count),
        pages=[p for p in pages if p.text], metadata={k: _field(v, 500) for k, v in keep.items()},
    )


_parses: set[threading.Thread] = set()


def _drain_parses(timeout: float = 30.0) -> None:
    """At exit, let parses still in Java finish (bounded): a thread returning from Java into a finalizing
    interpreter aborts the process ("FATAL: exception not rethrown"). One truly hung stays in Java, harmlessly."""
    deadline = time.monotonic() + timeout
    for thread in list(_parses):
        thread.join(max(0.0, deadline - time.monotonic()))


class _Jvm:
    """One JVM per process (a JVM cannot be restarted), shared by every TikaJvmExtractor in it."""

    lock = threading.Lock()
    parser = None

    @classmethod
    def get_parser(cls, jar: Path, heap: str):
        with cls.lock:
            if cls.parser is None:
                import jpype
                import jpype.config
                import jpype.imports  # noqa: F401

                if not jpype.isJVMStarted():
                    # The thread that creates a JVM becomes its non-daemon "main" thread: DestroyJavaVM at exit
                    # waits for it, forever if it is a pool thread. Created on the main thread (see
                    # start_jvm_on_main_thread) JPype's normal teardown is clean; elsewhere, skip the destroy.
                    jpype.config.destroy_jvm = threading.current_thread() is threading.main_thread()
                    atexit.register(_drain_parses)  # runs before JPype's own exit hook
                    jpype.startJVM(f"-Xmx{heap}", "-Djava.awt.headless=true",
                                   classpath=[str(jar)], convertStrings=False)
                from java.lang import Thread
                from org.apache.logging.log4j import Level
                from org.apache.logging.log4j.core.config import Configurator
                from org.apache.tika.config import TikaConfig
                from org.apache.tika.parser import AutoDetectParser

                # Parser problems reach us as exceptions; log4j's console chatter (font caches, POI) is noise.
                Configurator.setRootLevel(Level.OFF)
                # JPype's loader hides the jar's service files from Tika's default lookup: be explicit.
                loader = jpype.JClass("org.apache.tika.Tika").class_.getClassLoader()
                Thread.currentThread().setContextClassLoader(loader)
                cls.parser = AutoDetectParser(TikaConfig(loader))
            return cls.parser


def start_jvm_on_main_thread(start) -> None:
    """In a Dask worker, run `start` on the worker's event loop, which owns the process's main thread."""
    if _Jvm.parser is not None or threading.current_thread() is threading.main_thread():
        start()
        return
    try:
        from distributed import get_worker
        from distributed.utils import sync

        loop = get_worker().loop
    except (ImportError, ValueError):  # not in a Dask worker
        start()
        return

    async def on_loop() -> None:
        start()  # blocks the loop once, for the JVM start (~0.3 s)

    sync(loop, on_loop)


_JAVA_REASONS = {
    "ZeroByteFileException": "empty",
    "EncryptedDocumentException": "encrypted",
    "UnsupportedFormatException": "unsupported",
    "WriteLimitReachedException": "too_large",
    # A document that needs more than the heap (-Xmx tika_heap) or a nesting deeper than the parser's stack: the
    # JVM survives both (the parse is unwound), so they are this document's reason, not a dead worker.
    "OutOfMemoryError": "too_large",
    "StackOverflowError": "too_large",
}


def _java_reason(exc) -> str:
    """The reason for a Java exception, looking through its causes: Tika wraps its zip-bomb check
    (SecureContentHandler: "Suspected zip bomb") and the write limit in TikaException."""
    seen = 0
    while exc is not None and seen < 20:
        name = type(exc).__name__.rsplit(".", 1)[-1]
        if name in _JAVA_REASONS:
            return _JAVA_REASONS[name]
        if "zip bomb" in str(exc).lower():
            return "too_large"
        exc, seen = exc.getCause() if hasattr(exc, "getCause") else None, seen + 1
    return "corrupt"


class TikaJvmExtractor:
    """Tika's parsers in this process through JPype; a parse that overruns the timeout is abandoned."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.jar = find_tika_jar(settings)

    def _parse(self, obj: SourceObject, data: bytes) -> tuple[str, dict[str, Any]]:
        import jpype

        parser = _Jvm.get_parser(self.jar, self.settings.tika_heap)
        from java.lang import Thread
        from org.apache.tika.io import TikaInputStream
        from org.apache.tika.metadata import Metadata, TikaCoreProperties
        from org.apache.tika.parser import ParseContext, Parser
        from org.apache.tika.sax import ToXMLContentHandler, WriteOutContentHandler

        Thread.currentThread().setContextClassLoader(parser.getClass().getClassLoader())
        if self.settings.fault_dir:  # test-only fault injection, in this timed thread (millrace.pipeline.jvm_fault)
            from millrace.pipeline import jvm_fault

            jvm_fault(obj.doc_id, self.settings)
        md = Metadata()
        # The decoded name: Tika detects types by extension, and `%20report.pdf` is no name anyone gave a file.
        md.set(TikaCoreProperties.RESOURCE_NAME_KEY, display_name(obj.uri))
        context = ParseContext()
        context.set(Parser.class_, parser)  # descend into attachments and embedded files
        xml = ToXMLContentHandler()
        handler = WriteOutContentHandler(xml, self.settings.max_text_chars)
        parser.parse(TikaInputStream.get(jpype.JArray(jpype.JByte)(data)), handler, md, context)
        meta = {}
        for name in md.names():
            values = [str(v) for v in md.getValues(name)]
            meta[str(name)] = values[0] if len(values) == 1 else ", ".join(values)
        return str(xml.toString()), meta

    def extract(self, obj: SourceObject, data: bytes) -> Document:
        if not data:
            raise ExtractError("empty", "zero-byte file")
        # Start the JVM before the timed parse thread: an abandoned thread must never be mid-startup.
        start_jvm_on_main_thread(lambda: _Jvm.get_parser(self.jar, self.settings.tika_heap))
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = self._parse(obj, data)
            except BaseException as exc:  # Java exceptions arrive here as Python exceptions
                result["error"] = exc
            finally:
                _parses.discard(threading.current_thread())

        worker = threading.Thread(target=run, name=f"tika-{obj.doc_id[:8]}", daemon=True)
        _parses.add(worker)
        worker.start()
        worker.join(self.settings.parse_timeout_s)
        if worker.is_alive():
            raise ExtractError("timeout", f"parse exceeded {self.settings.parse_timeout_s:g}s")
        if "error" in result:
            exc = result["error"]
            import jpype

            if not isinstance(exc, jpype.JException):
                # Not the document's fault (JVM, jar, classpath): fail the run, don't blame every file.
                raise RuntimeError(f"Tika is unusable here: {type(exc).__name__}: {exc}") from exc
            name = type(exc).__name__.rsplit(".", 1)[-1]
            detail = str(exc).splitlines()[0][:300] if str(exc) else name
            raise ExtractError(_java_reason(exc), detail) from None
        xhtml, meta = result["value"]
        return build_document(obj, data, xhtml, meta)


def content_disposition(name: str) -> str:
    """RFC 6266 attachment header for any file name: an ASCII fallback and the exact UTF-8 name (the tika client's
    own header puts the raw name in, which HTTP cannot carry beyond Latin-1)."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class TikaServerExtractor:
    """A remote tika-server (the official apache/tika image) through the `tika` client's /rmeta/xml."""

    def __init__(self, settings: Settings):
        self.settings = settings
        os.environ.setdefault("TIKA_CLIENT_ONLY", "1")  # never let the client fetch a jar

    def extract(self, obj: SourceObject, data: bytes) -> Document:
        if not data:
            raise ExtractError("empty", "zero-byte file")
        import requests
        from tika import parser

        endpoint = self.settings.tika_endpoint
        headers = {"Content-Disposition": content_disposition(display_name(obj.uri))}
        # Connecting may take a moment; the parse itself gets parse_timeout_s, like the in-process extractor.
        timeouts = (min(10.0, self.settings.parse_timeout_s), self.settings.parse_timeout_s)

        def call() -> tuple[int, Any]:
            try:
                status, body = parser.from_buffer(data, serverEndpoint=endpoint, xmlContent=True,
                                                  headers=dict(headers), requestOptions={"timeout": timeouts},
                                                  raw_response=True)
            except requests.exceptions.ReadTimeout:
                # The server took the document and did not answer in time: the document's timeout, as in-process.
                # Not retried: the same parse would overrun again.
                limit = self.settings.parse_timeout_s
                raise ExtractError("timeout", f"tika-server parse exceeded {limit:g}s") from None
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema) as exc:
                raise ConfigError(f"MILLRACE_TIKA_ENDPOINT {endpoint!r} is not a usable URL: {exc}") from exc
            if status in (502, 503, 504):  # overloaded or restarting behind a proxy: may clear
                raise TransientError(f"tika-server {endpoint} answered {status}")
            return status, body

        try:
            status, body = with_retries(call, self.settings.retry_delays, what=f"tika-server parse of {obj.uri}")
        except (ExtractError, ConfigError):
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Refused, reset, timed out connecting, busy, after every attempt: this document failed for now (a
            # transient failure a later run retries), and the rest of the batch goes on.
            detail = f"tika-server {endpoint}: {type(exc).__name__}: {str(exc)[:200]}"
            raise ExtractError("unreachable", detail) from exc
        if status == 422:
            raise ExtractError("encrypted" if "ncrypt" in str(body) else "corrupt", f"tika-server 422 {str(body)[:200]}")
        if status == 415:
            raise ExtractError("unsupported", "tika-server 415 unsupported media type")
        if status in (204,) or not body:
            raise ExtractError("no_text", f"tika-server {status} with no content")
        if status != 200:
            raise ExtractError("corrupt", f"tika-server {status}: {str(body)[:200]}")
        import json

        parts = json.loads(body)
        meta = {k: v for k, v in parts[0].items() if k != "X-TIKA:content"}
        xhtml = "".join(p.get("X-TIKA:content", "") for p in parts)
        return build_document(obj, data, xhtml, meta)


def make_extractor(settings: Settings) -> Extractor:
    if settings.tika_endpoint:
        return TikaServerExtractor(settings)
    return TikaJvmExtractor(settings)
