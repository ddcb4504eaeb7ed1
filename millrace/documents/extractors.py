"""Which extractor a configuration gets: the tika-server that MILLRACE_TIKA_ENDPOINT names, else Tika's own parsers
in this process's JVM."""

from __future__ import annotations

from millrace.config import Settings
from millrace.documents.extract import Extractor, TikaJvmExtractor
from millrace.documents.tika_server import TikaServerExtractor


def make_extractor(settings: Settings) -> Extractor:
    return TikaServerExtractor(settings) if settings.tika_endpoint else TikaJvmExtractor(settings)
