"""Where documents come from: a local folder or an S3 prefix (any S3-compatible endpoint)."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Iterator, Protocol

from millrace.config import ConfigError, Settings
from millrace.records import SourceObject


class Source(Protocol):
    uri: str

    def list(self) -> Iterator[SourceObject]: ...

    def read(self, obj: SourceObject) -> bytes: ...


def _wanted(rel: str, include: list[str], exclude: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if include and not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in exclude)


class LocalSource:
    """A directory, walked recursively; hidden files and folders are skipped."""

    def __init__(self, root: str | Path, include: list[str] | None = None, exclude: list[str] | None = None):
        self.root = Path(root).expanduser().resolve()
        if not self.root.exists():
            raise ConfigError(f"source folder {self.root} does not exist")
        self.uri = self.root.as_uri()
        self.include, self.exclude = include or [], exclude or []

    def list(self) -> Iterator[SourceObject]:
        paths = [self.root] if self.root.is_file() else sorted(self.root.rglob("*"))
        for path in paths:
            rel = path.relative_to(self.root).as_posix() if path != self.root else path.name
            if not path.is_file() or any(part.startswith(".") for part in Path(rel).parts):
                continue
            if not _wanted(rel, self.include, self.exclude):
                continue
            st = path.stat()
            yield SourceObject.make(path.as_uri(), st.st_size, f"{st.st_size}-{st.st_mtime_ns}")

    def read(self, obj: SourceObject) -> bytes:
        return Path(obj.uri.removeprefix("file://")).read_bytes()


class S3Source:
    """An s3://bucket/prefix listing through s3fs; credentials from settings or the AWS chain."""

    def __init__(self, uri: str, settings: Settings):
        self.uri = uri.rstrip("/")
        self.settings = settings
        self.include, self.exclude = settings.include, settings.exclude
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:
            self._fs = s3_filesystem(self.settings)
        return self._fs

    def list(self) -> Iterator[SourceObject]:
        base = self.uri.removeprefix("s3://")
        try:
            found = self.fs.find(base, detail=True) if self.fs.isdir(base) else {base: self.fs.info(base)}
        except FileNotFoundError as exc:
            raise ConfigError(f"nothing at {self.uri}: check the bucket and prefix") from exc
        except Exception as exc:
            if _is_credentials_error(exc):
                raise ConfigError(f"S3 refused {self.uri}: check the credentials (MILLRACE_S3_KEY / "
                                  f"MILLRACE_S3_SECRET, an S3 block, or the AWS chain): {exc}") from exc
            raise
        for key, info in sorted(found.items()):
            if info.get("type") == "directory":
                continue
            rel = key[len(base):].lstrip("/") or key.rsplit("/", 1)[-1]
            if not _wanted(rel, self.include, self.exclude):
                continue
            etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
            yield SourceObject.make(f"s3://{key}", int(info.get("size") or 0), etag or f"{info.get('size')}")

    def read(self, obj: SourceObject) -> bytes:
        return self.fs.cat_file(obj.uri.removeprefix("s3://"))


def _is_credentials_error(exc: BaseException) -> bool:
    """Bad or missing keys, however s3fs/botocore wrap them: these never succeed on retry."""
    names = {"NoCredentialsError", "PartialCredentialsError", "InvalidAccessKeyId", "SignatureDoesNotMatch",
             "AccessDenied", "InvalidClientTokenId", "ExpiredToken"}
    while exc is not None:
        if isinstance(exc, PermissionError) or type(exc).__name__ in names or any(n in str(exc) for n in names):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def s3_filesystem(settings: Settings):
    import s3fs

    kwargs: dict = {"skip_instance_cache": True}
    client_kwargs: dict = {}
    if settings.s3_endpoint_url:
        client_kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_region:
        client_kwargs["region_name"] = settings.s3_region
    if settings.s3_key:
        kwargs["key"] = settings.s3_key
        kwargs["secret"] = settings.s3_secret.get_secret_value()
    # Without explicit keys s3fs falls back to the standard AWS chain (env, profile, instance role).
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, **kwargs)


def open_source(uri: str, settings: Settings) -> Source:
    from millrace.jsonl import JsonlSource, is_jsonl

    if uri.startswith("s3://"):
        return S3Source(uri, settings)
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"unsupported source {uri!r}: use a folder path or s3://bucket/prefix")
    if is_jsonl(uri.removeprefix("file://")):
        return JsonlSource(uri.removeprefix("file://"))
    return LocalSource(uri.removeprefix("file://"), settings.include, settings.exclude)
