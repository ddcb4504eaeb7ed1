"""A remote tika-server (the official apache/tika image) as the extractor, through the `tika` client."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from millrace.config import ConfigError, Settings
from millrace.documents.extract import ExtractError, build_document
from millrace.documents.records import Document, SourceObject
from millrace.documents.transcode import mail_as_utf8
from millrace.retry import TransientError, is_transient, with_retries
from millrace.uris import display_name


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
        parsed = mail_as_utf8(data)
        headers = {"Content-Disposition": content_disposition(display_name(obj.uri))}
        # Connecting may take a moment; the parse itself gets parse_timeout_s, like the in-process extractor.
        timeouts = (min(10.0, self.settings.parse_timeout_s), self.settings.parse_timeout_s)

        def call() -> tuple[int, Any]:
            try:
                status, body = parser.from_buffer(parsed, serverEndpoint=endpoint, xmlContent=True,
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
        parts = json.loads(body)
        meta = {k: v for k, v in parts[0].items() if k != "X-TIKA:content"}
        xhtml = "".join(p.get("X-TIKA:content", "") for p in parts)
        # The server's own configuration decides OCR (the apache/tika "-full" images carry tesseract).
        return build_document(obj, data, xhtml, meta, "OCR is up to the tika-server: use one with tesseract")
