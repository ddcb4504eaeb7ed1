"""Where documents come from: a local folder or an S3 prefix (any S3-compatible endpoint).

A document is named by its canonical URI, and its doc_id is a hash of that URI, so one name must always give one
URI: `Path.as_uri()` for files and `s3://bucket/` + the key quoted with safe='/' for objects. Both percent-encode,
so everything that touches the file or object (open, include/exclude patterns, titles, citations) decodes first."""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import stat
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import quote, unquote, unquote_plus, unquote_to_bytes, urlsplit

from millrace.config import ConfigError, Settings
from millrace.documents.records import SourceObject

log = logging.getLogger("millrace")


class Source(Protocol):
    uri: str

    def list(self) -> Iterator[SourceObject]: ...

    def read(self, obj: SourceObject) -> bytes: ...


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


_wanted = wanted  # the name before it was public


def canonical_source_uri(source: str) -> str:
    """The URI a source is known by (ledger rows and deletions are matched against it): a folder path or file://
    URI -> the resolved path's URI; `s3://bucket/prefix` as a user types it (a RAW key prefix) -> s3_uri of it,
    without a trailing slash."""
    if source.startswith("s3://"):
        bucket, _, prefix = source[len("s3://"):].partition("/")
        return s3_uri(bucket, prefix.rstrip("/"))
    path = uri_to_path(source) if source.startswith("file:") else Path(source).expanduser()
    return path.resolve().as_uri()


_SKIPPED_STAT_ERRORS = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)


class LocalSource:
    """A directory walked recursively in sorted order, or a single file. Hidden files and folders are skipped, and so
    are symbolic links unless `follow_symlinks` (then a linked file is read under the link's own path, and every
    real folder is walked once, so a link cycle ends)."""

    def __init__(self, root: str | Path, include: list[str] | None = None, exclude: list[str] | None = None,
                 follow_symlinks: bool = False):
        self.root = Path(root).expanduser().resolve()
        if not self.root.exists():
            raise ConfigError(f"source folder {self.root} does not exist")
        self.uri = path_to_uri(self.root)
        self.include, self.exclude = include or [], exclude or []
        self.follow_symlinks = follow_symlinks

    def _files(self) -> Iterator[tuple[str, str]]:
        """(path, decoded relative path) of every candidate file, deterministic."""
        if not self.root.is_dir():
            yield str(self.root), self.root.name
            return
        seen: set[tuple[int, int]] = set()

        def unreadable(exc: OSError) -> None:
            log.warning("skipping %s: %s", exc.filename, exc.strerror)

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable, followlinks=self.follow_symlinks):
            try:
                st = os.stat(dirpath)
            except OSError:  # vanished since its parent was listed
                dirnames[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen:  # a second link to a folder already walked, or a link cycle
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and (self.follow_symlinks or not os.path.islink(os.path.join(dirpath, d))))
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if name.startswith(".") or (not self.follow_symlinks and os.path.islink(path)):
                    continue
                yield path, name if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{name}"

    def list(self) -> Iterator[SourceObject]:
        # In path order (by components, as sorted Paths compare), whatever order the walk met the folders in.
        for path, rel in sorted(self._files(), key=lambda item: item[1].split("/")):
            if not wanted(rel, self.include, self.exclude):
                continue
            try:
                st = os.stat(path)
            except OSError as exc:  # deleted between the walk and now, a dangling or looping link
                if exc.errno in _SKIPPED_STAT_ERRORS:
                    continue
                raise
            if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
                continue
            yield SourceObject.make(path_to_uri(path), st.st_size, f"{st.st_size}-{st.st_mtime_ns}",
                                    modified=st.st_mtime)

    def named(self, rels: list[str]) -> Iterator[SourceObject]:
        """Just the named files (decoded paths relative to the folder), each stat'ed, without walking the folder; a
        name that is gone, hidden, a link (unless followed) or outside the folder yields nothing."""
        if not self.root.is_dir():
            yield from (o for o in self.list() if relative_name(self.uri, o.uri) in rels)
            return
        for rel in sorted(set(rels)):
            parts = rel.split("/")
            path = self.root.joinpath(*parts)
            if any(p.startswith(".") or p in ("", "..") for p in parts) or not wanted(rel, self.include, self.exclude):
                continue
            if not self.follow_symlinks and any(self.root.joinpath(*parts[:i + 1]).is_symlink()
                                                for i in range(len(parts))):
                continue
            try:
                st = os.stat(path)
            except OSError as exc:
                if exc.errno in _SKIPPED_STAT_ERRORS:
                    continue
                raise
            if stat.S_ISREG(st.st_mode):
                yield SourceObject.make(path_to_uri(path), st.st_size, f"{st.st_size}-{st.st_mtime_ns}",
                                        modified=st.st_mtime)

    def read(self, obj: SourceObject) -> bytes:
        return uri_to_path(obj.uri).read_bytes()


def route_keys(bucket: str, keys: list[str], sources: list[str]) -> dict[str, list[str]]:
    """Group the (decoded) keys of an S3 event batch by the configured source that holds each, as paths relative to
    it; keys outside every configured s3:// source are left out. No configured source of the bucket: the bucket."""
    mine = [canonical_source_uri(s) for s in sources if s.startswith(f"s3://{bucket}/") or s in (f"s3://{bucket}",)]
    roots = sorted(set(mine or [s3_uri(bucket, "")]), key=len, reverse=True)  # the deepest source wins
    routed: dict[str, list[str]] = {}
    for key in keys:
        uri = s3_uri(bucket, key)
        for root in roots:
            rel = relative_name(root, uri)
            if rel is not None and uri != root:
                routed.setdefault(root, []).append(rel)
                break
    return {root: sorted(set(rels)) for root, rels in routed.items()}


def open_source(uri: str, settings: Settings) -> Source:
    from millrace.sources.jsonl import JsonlSource, is_jsonl

    if uri.startswith("s3://"):
        from millrace.sources.s3 import S3Source

        return S3Source(uri, settings)
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"unsupported source {uri!r}: use a folder path or s3://bucket/prefix")
    path = uri_to_path(uri) if uri.startswith("file:") else Path(uri)
    if is_jsonl(path):
        return JsonlSource(path)
    return LocalSource(path, settings.include, settings.exclude, follow_symlinks=settings.follow_symlinks)
