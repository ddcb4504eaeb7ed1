"""Text extraction with Apache Tika's real parsers: an in-process JVM (default) or a remote tika-server."""

from __future__ import annotations

import atexit
import glob
import hashlib
import os
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
from millrace.xhtml import xhtml_to_pages

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


def _title(meta: dict[str, Any], obj: SourceObject) -> str:
    title = meta.get("dc:title") or meta.get("title") or ""
    if isinstance(title, list):
        title = title[0] if title else ""
    return str(title).strip() or display_name(obj.uri)


def build_document(obj: SourceObject, data: bytes, xhtml: str, meta: dict[str, Any]) -> Document:
    """Shared by both backends: XHTML + metadata -> Document, or ExtractError when there is no text."""
    pages = xhtml_to_pages(xhtml)
    content_type = str(meta.get("Content-Type", "")).split(";")[0].strip()
    if not any(p.text for p in pages):
        if "EmptyParser" in str(meta.get("X-TIKA:Parsed-By", "")) or content_type == "application/octet-stream":
            raise ExtractError("unsupported", f"no Tika parser for content type {content_type or 'unknown'}")
        hint = " (image-only or scanned? OCR is off)" if content_type.startswith(("application/pdf", "image/")) else ""
        raise ExtractError("no_text", f"{content_type}: no extractable text{hint}")
    page_count = meta.get("xmpTPg:NPages") or meta.get("meta:page-count") or meta.get("meta:slide-count") or 0
    keep = {k: v for k, v in meta.items() if k in ("dc:creator", "dcterms:created", "dcterms:modified",
                                                       "Content-Encoding", "dc:subject")}
    return Document(
        doc_id=obj.doc_id, source_uri=obj.uri, fingerprint=obj.fingerprint,
        content_hash=hashlib.sha256(data).hexdigest(), content_type=content_type,
        title=_title(meta, obj)[:500], language=str(meta.get("dc:language", "") or "")[:16],
        page_count=int(str(page_count).split(",")[0] or 0) if str(page_count).split(",")[0].isdigit() else 0,
        pages=[p for p in pages if p.text], metadata={k: str(v)[:500] for k, v in keep.items()},
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
}


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
            raise ExtractError(_JAVA_REASONS.get(name, "corrupt"), detail) from None
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
