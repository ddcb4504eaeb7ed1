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
from millrace.records import SourceObject
from millrace.retry import exception_chain, is_transient, with_retries

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


class S3Source:
    """An s3://bucket/prefix listing through s3fs; credentials from settings or the AWS chain."""

    def __init__(self, uri: str, settings: Settings):
        self.uri = canonical_source_uri(uri)
        self.bucket, self.prefix = s3_location(self.uri)
        self.settings = settings
        self.include, self.exclude = settings.include, settings.exclude
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:
            from millrace import clients  # the factory imports this module: imported here, not at the top

            self._fs = clients.s3_filesystem(self.settings)
        return self._fs

    def _find(self) -> dict[str, dict]:
        base = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        try:
            return self.fs.find(base, detail=True) if self.fs.isdir(base) else {base: self.fs.info(base)}
        except FileNotFoundError as exc:
            raise ConfigError(f"nothing at {self.uri}: check the bucket and prefix") from exc
        except Exception as exc:
            if _is_credentials_error(exc):
                raise ConfigError(f"S3 refused {self.uri}: check the credentials (MILLRACE_S3_KEY / "
                                  f"MILLRACE_S3_SECRET, an S3 block, or the AWS chain): {exc}") from exc
            raise

    def list(self) -> Iterator[SourceObject]:
        try:
            found = with_retries(self._find, self.settings.retry_delays, what=f"list {self.uri}")
        except Exception as exc:
            if not is_transient(exc):
                raise
            endpoint = self.settings.s3_endpoint_url or "AWS S3"
            raise SourceUnavailable(
                f"cannot list {self.uri} at {endpoint} after {len(self.settings.retry_delays) + 1} tries "
                f"({type(exc).__name__}: {str(exc)[:200]}); nothing was changed: run again when S3 answers "
                "(MILLRACE_RETRY_DELAYS sets how long a run waits)") from exc
        yield from self._objects(found)

    def named(self, rels: list[str]) -> Iterator[SourceObject]:
        """Just the named keys (decoded, relative to the prefix), one HEAD each instead of listing the prefix; a key
        that is gone yields nothing (so the run deletes it)."""
        from concurrent.futures import ThreadPoolExecutor

        def stat(rel: str) -> tuple[str, dict | None]:
            path = f"{self.bucket}/{self.prefix}/{rel}" if self.prefix else f"{self.bucket}/{rel}"
            try:
                return path, with_retries(lambda: self.fs.info(path), self.settings.retry_delays,
                                          what=f"stat s3://{path}")
            except FileNotFoundError:
                return path, None

        names = sorted(set(rels))
        # HEADs wait on the network, not the CPU: a draining round of a few hundred keys asks for them together.
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(names)))) as pool:
            found = {path: info for path, info in pool.map(stat, names) if info is not None}
        yield from self._objects(found)

    def _objects(self, found: dict[str, dict]) -> Iterator[SourceObject]:
        for path, info in sorted(found.items()):
            key = path.split("/", 1)[1] if "/" in path else ""
            if info.get("type") == "directory" or not key or key.endswith("/"):
                continue
            uri = s3_uri(self.bucket, key)
            rel = relative_name(self.uri, uri) or display_name(uri)
            if not wanted(rel, self.include, self.exclude):
                continue
            etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
            yield SourceObject.make(uri, int(info.get("size") or 0), etag or f"{info.get('size')}",
                                    modified=_timestamp(info.get("LastModified") or info.get("last_modified")))

    def read(self, obj: SourceObject) -> bytes:
        bucket, key = s3_location(obj.uri)
        return with_retries(lambda: self._get(bucket, key, obj), self.settings.retry_delays, what=f"read {obj.uri}")

    def _get(self, bucket: str, key: str, obj: SourceObject) -> bytes:
        """The object as it was listed, in one GET with If-Match on the listed ETag. Without it an overwrite
        between listing and reading put the new content in the index under the old ETag (so a later overwrite back
        to the old content was never read again), and s3fs's ranged reads of a large object could mix versions."""
        from fsspec.asyn import sync

        etag = obj.fingerprint if obj.fingerprint not in ("", "None", str(obj.size)) else ""
        match = {"IfMatch": f'"{etag}"'} if etag else {}

        async def get() -> bytes:
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, **match)
            try:
                return await response["Body"].read()
            finally:
                response["Body"].close()

        try:
            return sync(self.fs.loop, get)
        except OSError as exc:
            if etag and any("PreconditionFailed" in f"{type(link).__name__} {link}" or
                            _http_code(link) == 412 for link in exception_chain(exc)):
                raise ObjectChanged(f"{obj.uri} changed since it was listed (its ETag is no longer {etag}); the "
                                    "next run reads the new version") from exc
            raise


class SourceUnavailable(RuntimeError):
    """The source did not answer through all the retries: the run stops before changing anything."""


class ObjectChanged(RuntimeError):
    """An object was overwritten between listing and reading: not retried now (the listing is stale), a transient
    read failure that the next run, listing again, resolves."""


def _http_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return ((response or {}).get("ResponseMetadata") or {}).get("HTTPStatusCode") if isinstance(response, dict) \
        else None


def _timestamp(value) -> float:
    """S3's LastModified (a datetime from boto, or text) as epoch seconds; 0 when absent."""
    if value is None:
        return 0.0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        from datetime import datetime

        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _is_credentials_error(exc: BaseException) -> bool:
    """Bad or missing keys, however s3fs/botocore wrap them: these never succeed on retry."""
    names = {"NoCredentialsError", "PartialCredentialsError", "InvalidAccessKeyId", "SignatureDoesNotMatch",
             "AccessDenied", "InvalidClientTokenId", "ExpiredToken"}
    return any(isinstance(link, PermissionError) or type(link).__name__ in names or any(n in str(link) for n in names)
               for link in exception_chain(exc))


def s3_filesystem(settings: Settings):
    import s3fs

    # Not fsspec's instance cache (millrace.clients keeps one per process), and no listings cache: a listing must
    # show the bucket as it is now, not as an earlier run of this process saw it.
    kwargs: dict = {"skip_instance_cache": True, "use_listings_cache": False}
    client_kwargs: dict = {}
    if settings.s3_endpoint_url:
        client_kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_region:
        client_kwargs["region_name"] = settings.s3_region
    if settings.s3_key:
        kwargs["key"] = settings.s3_key
        kwargs["secret"] = settings.s3_secret.get_secret_value()
    # Retries happen in one layer, ours (millrace.retry): botocore would otherwise retry each request (3 to 5
    # attempts by mode) and s3fs's _error_wrapper each call again (retries=5, a class attribute, not an argument).
    config = {"retries": {"total_max_attempts": 1, "mode": "standard"}}
    # Without explicit keys s3fs falls back to the standard AWS chain (env, profile, instance role).
    fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, config_kwargs=config, **kwargs)
    fs.retries = 1
    return fs


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
    from millrace.jsonl import JsonlSource, is_jsonl

    if uri.startswith("s3://"):
        return S3Source(uri, settings)
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"unsupported source {uri!r}: use a folder path or s3://bucket/prefix")
    path = uri_to_path(uri) if uri.startswith("file:") else Path(uri)
    if is_jsonl(path):
        return JsonlSource(path)
    return LocalSource(path, settings.include, settings.exclude, follow_symlinks=settings.follow_symlinks)
