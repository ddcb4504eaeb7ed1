"""Apache Tika block: a remote tika-server, or the embedded tika-app jar."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field


class TikaBlock(Block):
    """Text extraction: `endpoint` for a tika-server, else the tika-app jar in a per-worker JVM."""

    _block_type_name = "Millrace Tika"
    _block_type_slug = "millrace-tika"

    endpoint: str = Field("", description="http://tika:9998 for a tika-server; empty = embedded JVM")
    jar: str = Field("", description="path of a tika-app 3.x jar; empty = the one `millrace setup-tika` fetched")
    timeout_s: float = 120.0
    max_doc_bytes: int = 100 * 1024 * 1024

    def to_settings(self) -> dict:
        return {"tika_endpoint": self.endpoint, "tika_jar": self.jar, "parse_timeout_s": self.timeout_s,
                "max_doc_bytes": self.max_doc_bytes}

    def get_client(self):
        """An Extractor for this configuration."""
        from millrace.config import Settings
        from millrace.documents.extractors import make_extractor

        return make_extractor(Settings(**{k: v for k, v in self.to_settings().items() if v}))
