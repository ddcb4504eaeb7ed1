"""Object addresses. A document is named by its canonical URI, and its doc_id is a hash of that URI, so one name must
always give one URI: `Path.as_uri()` for files and `s3://bucket/` + the key quoted with safe='/' for objects. Both
percent-encode, so everything that touches the file or object (open, include/exclude patterns, titles, citations)
decodes first."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from urllib.parse import quote, unquote, unquote_plus, unquote_to_bytes, urlsplit


def path_to_uri(path: str | Path) -> str:
    """The canonical URI of a local file: absolute, percent-encoded (as Path.as_uri, quote with safe='/')."""
    return Path(path).absolute().as_uri()


def _decode_file_part(part: str) -> str:
    # Through bytes: a name that is not UTF-8 was encoded from its raw bytes and must come back to the same bytes.
    return os.fsdecode(unquote_to_bytes(part))


def uri_to_path(uri: str) -> Path:
    """The local path a file:// URI names, decoded (`audit%20report.txt` -> `audit report.txt`); any #fragment
    (a JSONL record id) is not part of the path."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise ValueError(f"not a file:// URI: {uri!r}")
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file URI on another host: {uri!r}")
    return Path(_decode_file_part(parts.path))


def s3_uri(bucket: str, key: str) -> str:
    """The canonical URI of an S3 object; ordinary keys come out unchanged."""
    return f"s3://{bucket}/{quote(key, safe='/')}" if key else f"s3://{bucket}"


def s3_location(uri: str) -> tuple[str, str]:
    """(bucket, decoded key) of a canonical s3:// URI."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, unquote(key)


def s3_event_key(raw: str) -> str:
    """The object key of an S3 event notification, which arrives URL-encoded with '+' for a space."""
    return unquote_plus(raw)


def _decode(uri: str, part: str) -> str:
    return _decode_file_part(part) if uri.startswith("file:") else unquote(part)


def display_name(uri: str) -> str:
    """What a person calls the document: the decoded last path segment (`café notes.txt`); a JSONL record keeps
    its id after the file name (`corpus.jsonl#doc-7`)."""
    if "://" not in uri:
        return uri.rstrip("/").rsplit("/", 1)[-1]
    base, sep, fragment = uri.partition("#")
    rest = base.split("://", 1)[1].rstrip("/")
    name = _decode(uri, rest.rsplit("/", 1)[-1]) if rest else base
    return f"{name}#{unquote(fragment)}" if sep else name


def relative_name(source_uri: str, obj_uri: str) -> str | None:
    """The decoded path of an object below a source folder or prefix (`sub dir/a b.txt`); for a source that is
    itself the file or object, its own name; None when the object lies outside the source."""
    src = source_uri.rstrip("/")
    base = obj_uri.partition("#")[0] if obj_uri.startswith("file:") else obj_uri
    if base == src:
        return display_name(src)
    if base.startswith(src + "/"):
        return _decode(obj_uri, base[len(src) + 1:])
    return None


def wanted(rel: str, include: list[str], exclude: list[str]) -> bool:
    """Include/exclude glob patterns, matched against the DECODED relative path and against the file name."""
    name = rel.rsplit("/", 1)[-1]
    if include and not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in exclude)




def canonical_source_uri(source: str) -> str:
    """The URI a source is known by (ledger rows and deletions are matched against it): a folder path or file://
    URI -> the resolved path's URI; `s3://bucket/prefix` as a user types it (a RAW key prefix) -> s3_uri of it,
    without a trailing slash."""
    if source.startswith("s3://"):
        bucket, _, prefix = source[len("s3://"):].partition("/")
        return s3_uri(bucket, prefix.rstrip("/"))
    path = uri_to_path(source) if source.startswith("file:") else Path(source).expanduser()
    return path.resolve().as_uri()
