"""JSONL record corpora (one {"_id", "title", "text"} object per line, BEIR's layout) as a source of documents.

Each record is a document with its own id, fingerprint and ledger row, so record corpora get the same incremental
sync as folders: an edited record is re-embedded, a removed one leaves the index."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

from millrace.config import ConfigError
from millrace.documents.records import Document, Page, SourceObject

RECORD_MEDIA_TYPE = "application/x-millrace-record+json"
SUFFIXES = (".jsonl", ".jsonl.gz")

_cache: dict[tuple, dict[str, bytes]] = {}
_lock = threading.Lock()


def is_jsonl(path: str | Path) -> bool:
    return str(path).endswith(SUFFIXES) and Path(path).is_file()


def _load(path: Path) -> dict[str, bytes]:
    """Records by id, parsed once per process and file version (workers read many records of one file)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
    with _lock:
        if key not in _cache:
            opener = gzip.open if path.name.endswith(".gz") else open
            records: dict[str, bytes] = {}
            with opener(path, "rt", encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        rid = str(rec["_id"])
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ConfigError(f"{path}:{n}: not a JSONL record with an \"_id\" ({exc})") from exc
                    body = {"title": str(rec.get("title") or ""), "text": str(rec.get("text") or "")}
                    records[rid] = json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")
            _cache.clear()  # one corpus version per process is enough; old ones would only hold memory
            _cache[key] = records
        return _cache[key]


class JsonlSource:
    """A .jsonl or .jsonl.gz file; a record's URI is the file's URI with its id as the fragment."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise ConfigError(f"record file {self.path} does not exist")
        self.uri = self.path.as_uri()

    def list(self) -> Iterator[SourceObject]:
        modified = self.path.stat().st_mtime  # records have no time of their own: the file's
        for rid, body in _load(self.path).items():
            yield SourceObject.make(f"{self.uri}#{quote(rid, safe='')}", len(body),
                                    hashlib.sha256(body).hexdigest()[:24], media_type=RECORD_MEDIA_TYPE,
                                    modified=modified)

    def read(self, obj: SourceObject) -> bytes:
        rid = record_id(obj.uri)
        try:
            return _load(self.path)[rid]
        except KeyError:
            raise FileNotFoundError(f"record {rid} is no longer in {self.path}") from None


def record_id(uri: str) -> str:
    return unquote(uri.rsplit("#", 1)[1])


def record_document(obj: SourceObject, data: bytes) -> Document:
    """A record needs no parser: title + text, joined as MTEB does, is the document's one page."""
    from millrace.documents.extract import ExtractError

    body = json.loads(data)
    text = f"{body['title']} {body['text']}".strip()
    if not text:
        raise ExtractError("empty", "record has no title or text")
    return Document(doc_id=obj.doc_id, source_uri=obj.uri, fingerprint=obj.fingerprint,
                    content_hash=hashlib.sha256(data).hexdigest(), content_type="text/plain",
                    title=(body["title"] or record_id(obj.uri))[:500], pages=[Page(number=0, text=text)])
