"""Text extraction with Apache Tika's real parsers: an in-process JVM (default) or a remote tika-server
(millrace.documents.tika_server)."""

from __future__ import annotations

import atexit
import glob
import hashlib
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

from millrace.config import ConfigError, Settings
from millrace.documents import ocr, parse_threads
from millrace.documents.records import Document, SourceObject
from millrace.documents.transcode import mail_as_utf8
from millrace.documents.xhtml import XhtmlError, scrub, xhtml_to_pages
from millrace.uris import display_name

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


def build_document(obj: SourceObject, data: bytes, xhtml: str, meta: dict[str, Any],
                   ocr_note: str = "OCR is off") -> Document:
    """Shared by both backends: XHTML + metadata -> Document, or ExtractError when there is no text (for a PDF or an
    image, `ocr_note` says what OCR did or how to turn it on)."""
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
        hint = f" (image-only or scanned? {ocr_note})" if content_type.startswith(("application/pdf", "image/")) else ""
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


class _Jvm:
    """One JVM per process (a JVM cannot be restarted), shared by every TikaJvmExtractor in it."""

    lock = threading.Lock()
    parser = None
    types = None  # the parser's media types with OCR allowed (see millrace.documents.ocr.ocr_types)

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
                    atexit.register(parse_threads.drain)  # runs before JPype's own exit hook
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
                parser = AutoDetectParser(TikaConfig(loader))
                cls.types = ocr.ocr_types(parser)
                cls.parser = parser
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
        if "TesseractOCRParser timeout" in str(exc):  # an image file's OCR past MILLRACE_OCR_PAGE_TIMEOUT_S
            return "timeout"
        exc, seen = exc.getCause() if hasattr(exc, "getCause") else None, seen + 1
    return "corrupt"


class TikaJvmExtractor:
    """Tika's parsers in this process through JPype; a parse that overruns the timeout is abandoned."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.jar = find_tika_jar(settings)

    def _parse(self, obj: SourceObject, data: bytes, result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        import jpype

        parser = _Jvm.get_parser(self.jar, self.settings.tika_heap)
        from java.lang import Thread
        from org.apache.tika.io import TikaInputStream
        from org.apache.tika.metadata import Metadata, TikaCoreProperties
        from org.apache.tika.parser import ParseContext
        from org.apache.tika.sax import ToXMLContentHandler, WriteOutContentHandler

        Thread.currentThread().setContextClassLoader(parser.getClass().getClassLoader())
        md = Metadata()
        # The decoded name: Tika detects types by extension, and `%20report.pdf` is no name anyone gave a file.
        md.set(TikaCoreProperties.RESOURCE_NAME_KEY, display_name(obj.uri))
        context = ParseContext()
        # The context's parser descends into attachments and embedded files; with OCR on, through the OCR gate.
        gate = result["gate"] = ocr.configure(context, parser, _Jvm.types, self.settings)
        xml = ToXMLContentHandler()
        handler = WriteOutContentHandler(xml, self.settings.max_text_chars)
        try:
            parser.parse(TikaInputStream.get(jpype.JArray(jpype.JByte)(data)), handler, md, context)
        finally:
            if gate is not None and gate.stop is not None:  # the gate's limit, not the exception Tika made of it
                raise gate.stop
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
        if ocr.mode(self.settings) == "auto" and ocr.has_ocr(_Jvm.types):
            ocr.check_languages(self.settings)
        parsed = mail_as_utf8(data)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = self._parse(obj, parsed, result)
            except BaseException as exc:  # Java exceptions arrive here as Python exceptions
                result["error"] = exc

        if not parse_threads.run(run, self.settings.parse_timeout_s):
            limit = self.settings.parse_timeout_s
            if result.get("gate") is not None:  # stop OCR of the abandoned parse at its next page
                result["gate"].stop = ocr.OcrStop("timeout", f"parse exceeded {limit:g}s")
            raise ExtractError("timeout", f"parse exceeded {limit:g}s")
        if "error" in result:
            exc = result["error"]
            import jpype

            if isinstance(exc, ocr.OcrStop):
                raise ExtractError(exc.reason, exc.detail) from None

            if not isinstance(exc, jpype.JException):
                # Not the document's fault (JVM, jar, classpath): fail the run, don't blame every file.
                raise RuntimeError(f"Tika is unusable here: {type(exc).__name__}: {exc}") from exc
            name = type(exc).__name__.rsplit(".", 1)[-1]
            detail = str(exc).splitlines()[0][:300] if str(exc) else name
            raise ExtractError(_java_reason(exc), detail) from None
        xhtml, meta = result["value"]
        return build_document(obj, data, xhtml, meta, ocr.no_text_note(self.settings, ocr.has_ocr(_Jvm.types)))
