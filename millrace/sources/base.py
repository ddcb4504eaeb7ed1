"""Where documents come from: the Source interface, the local folder source, which configured source an S3 key
belongs to, and the source a URI names (a folder, an S3 prefix on any S3-compatible endpoint, a JSONL file).
Objects are named by their canonical URIs (millrace.uris)."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Iterator, Protocol

from millrace.config import ConfigError, Settings
from millrace.documents.records import SourceObject
from millrace.uris import canonical_source_uri, path_to_uri, relative_name, s3_uri, uri_to_path, wanted

log = logging.getLogger("millrace")


class Source(Protocol):
    uri: str

    def list(self) -> Iterator[SourceObject]: ...

    def read(self, obj: SourceObject) -> bytes: ...


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
