"""OCR through Tika's TesseractOCRParser: what is OCR'd (PDF pages without a text layer, image files), with which
languages, and within which limits (a time per page, a number of pages per document, the parse timeout)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from typing import Any

from millrace.config import ConfigError, Settings

MODES = ("auto", "off")
INSTALL = ("install tesseract-ocr (Debian: apt-get install tesseract-ocr tesseract-ocr-eng) so `tesseract` is on "
           "the PATH")
# Tesseract's language names: eng, chi_sim, script/Latin (the pattern Tika itself accepts).
_LANGUAGE = re.compile(r"[A-Za-z0-9_]+|script/[A-Z][A-Za-z_]+")
# What Tika's PDF parser asks of the context's parser for each page it renders for OCR.
_OCR_TYPE_PREFIX = "image/ocr-"


def mode(settings: Settings) -> str:
    value = settings.ocr.strip().lower()
    if value not in MODES:
        raise ConfigError(f"MILLRACE_OCR={settings.ocr!r}: expected one of {', '.join(MODES)}")
    return value


def languages(settings: Settings) -> str:
    """The configured languages as tesseract's `-l` value ("eng+deu"); "," and spaces separate as well as "+"."""
    names = [n for n in re.split(r"[+,\s]+", settings.ocr_languages.strip()) if n]
    bad = [n for n in names if not _LANGUAGE.fullmatch(n)]
    if not names or bad:
        raise ConfigError(f"MILLRACE_OCR_LANGUAGES={settings.ocr_languages!r}: expected tesseract language codes "
                          "joined by '+', e.g. eng+deu")
    return "+".join(names)


@functools.lru_cache(maxsize=4)
def installed_languages(tesseract: str) -> frozenset[str]:
    done = subprocess.run([tesseract, "--list-langs"], capture_output=True, text=True, timeout=30)
    # The first line is a heading ("List of available languages in ..."), the rest one name a line.
    return frozenset(line.strip() for line in done.stdout.splitlines()[1:] if line.strip())


def check_languages(settings: Settings) -> None:
    """A language tesseract lacks is the configuration's fault, not every scanned document's: fail the run."""
    tesseract = shutil.which("tesseract")
    if tesseract is None:
        return
    have = installed_languages(tesseract)
    missing = [n for n in languages(settings).split("+") if n not in have]
    if missing:
        packages = " ".join(f"tesseract-ocr-{n.lower().replace('_', '-')}" for n in missing)
        raise ConfigError(f"MILLRACE_OCR_LANGUAGES: tesseract has no {', '.join(missing)} (installed: "
                          f"{', '.join(sorted(have)) or 'none'}); install {packages}")


def no_text_note(settings: Settings, available: bool) -> str:
    """Why a PDF or image gave no text, and what would change it."""
    if mode(settings) == "off":
        return "OCR is off: set MILLRACE_OCR=auto"
    if not available:
        return f"OCR is unavailable: {INSTALL}"
    return "OCR found no text either"


def ocr_types(parser) -> Any:
    """The media types the parser handles with OCR allowed: what Tika's PDF parser checks before it renders a page
    for OCR. Without tesseract on the JVM's PATH there are no image/ocr-* types among them."""
    from org.apache.tika.parser import ParseContext
    from org.apache.tika.parser.ocr import TesseractOCRConfig

    context = ParseContext()
    allowed = TesseractOCRConfig()
    allowed.setSkipOcr(False)
    context.set(TesseractOCRConfig.class_, allowed)
    return parser.getSupportedTypes(context)


def has_ocr(types) -> bool:
    return any(str(t).startswith(_OCR_TYPE_PREFIX) for t in types)


class OcrStop(Exception):
    """The document went past an OCR limit (or its parse was abandoned); `reason`/`detail` as ExtractError's."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@functools.lru_cache(maxsize=1)
def _gate_class():
    import jpype

    @jpype.JImplements("org.apache.tika.parser.Parser")
    class Gate:
        """Tika's parser as the parse context sees it: every embedded document and every page rendered for OCR
        passes here (one call each, not per SAX event), so the limits are kept and an abandoned parse stops at its
        next page. Pictures inside documents are not OCR'd (noise and time); PDF pages (at any depth: a scan
        attached to a mail) and image files are."""

        def __init__(self, inner, types, settings: Settings):
            self.inner, self.types, self.settings = inner, types, settings
            self.depth = 0  # embedded documents being parsed below the top-level one
            self.pages = 0
            self.stop: OcrStop | None = None

        @jpype.JOverride
        def getSupportedTypes(self, context):
            return self.types

        def _halt(self, reason: str, detail: str):
            from java.lang import RuntimeException

            self.stop = OcrStop(reason, detail)
            # A RuntimeException: Tika's PDF parser goes on to the next page after an IOException or TikaException.
            return RuntimeException(f"millrace: {detail}")

        @jpype.JOverride
        def parse(self, stream, handler, metadata, context):
            from org.apache.tika.metadata import TikaCoreProperties, TikaPagedText

            if self.stop is not None:
                raise self._halt(self.stop.reason, self.stop.detail)
            override = metadata.get(TikaCoreProperties.CONTENT_TYPE_PARSER_OVERRIDE)
            if override is None or not str(override).startswith(_OCR_TYPE_PREFIX):
                self.depth += 1
                try:
                    self.inner.parse(stream, handler, metadata, context)
                finally:
                    self.depth -= 1
                return
            # An image to OCR: a PDF page rendered for it (it carries a page number), or an image document's pixels.
            if metadata.get(TikaPagedText.PAGE_NUMBER) is None and self.depth > 0:
                return  # a picture inside another document
            self.pages += 1
            cap = self.settings.ocr_max_pages
            if cap and self.pages > cap:
                seen = metadata.getInt(TikaPagedText.PAGE_NUMBER)
                if seen is None or self.pages * 2 > int(seen):  # most pages so far were pictures: a scan
                    raise self._halt("too_large", f"more than {cap} pages need OCR (MILLRACE_OCR_MAX_PAGES)")
                return  # a long text document with many figure pages: its text layer stands, the rest unread
            try:
                self.inner.parse(stream, handler, metadata, context)
            except jpype.JException as exc:
                if "TesseractOCRParser timeout" in str(exc):
                    limit, number = self.settings.ocr_page_timeout_s, metadata.getInt(TikaPagedText.PAGE_NUMBER)
                    raise self._halt("timeout", f"OCR of page {number or self.pages} exceeded {limit:g}s "
                                                "(MILLRACE_OCR_PAGE_TIMEOUT_S)") from None
                raise

    return Gate


def configure(context, parser, types, settings: Settings):
    """Set the OCR part of a parse context; returns the gate (None when OCR is off or unavailable), whose `stop`
    says afterwards whether a limit was hit, and which a caller abandoning the parse sets to stop it."""
    from org.apache.tika.parser import Parser
    from org.apache.tika.parser.ocr import TesseractOCRConfig
    from org.apache.tika.parser.pdf import PDFParserConfig

    pdf = PDFParserConfig()
    tess = TesseractOCRConfig()
    if mode(settings) == "off" or not has_ocr(types):
        pdf.setOcrStrategy("NO_OCR")
        tess.setSkipOcr(True)
        context.set(PDFParserConfig.class_, pdf)
        context.set(TesseractOCRConfig.class_, tess)
        context.set(Parser.class_, parser)
        return None
    pdf.setOcrStrategy("AUTO")  # only pages with (almost) no text layer, by Tika's per-page character count
    tess.setLanguage(languages(settings))
    tess.setTimeoutSeconds(max(1, int(round(settings.ocr_page_timeout_s))))
    context.set(PDFParserConfig.class_, pdf)
    context.set(TesseractOCRConfig.class_, tess)
    gate = _gate_class()(parser, types, settings)
    context.set(Parser.class_, gate)
    return gate
