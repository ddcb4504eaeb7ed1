"""An s3://bucket/prefix as a source: listing, named lookups and reads through s3fs, with one retry layer (ours),
and the errors S3 gives that a run must tell apart (bad credentials, an object overwritten since it was listed)."""

from __future__ import annotations

import os
from typing import Iterator

from millrace import registry
from millrace.config import ConfigError, Settings
from millrace.documents.records import SourceObject
from millrace.retry import exception_chain, is_transient, with_retries
from millrace.uris import canonical_source_uri, display_name, relative_name, s3_location, s3_uri, wanted


# From this many named keys on, a lookup lists their key range instead of one HEAD each (a LIST answers up to 1,000).
LIST_FROM_KEYS = 32
# ... but lists at most this many keys per named one (plus a page) before HEADing the rest.
LIST_KEYS_PER_NAMED = 4
LIST_PAGE_KEYS = 1000  # S3's own maximum for one LIST


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
            self._fs = shared_filesystem(self.settings)
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
        """Just the named keys (decoded, relative to the prefix); a key that is gone yields nothing (so the run
        deletes it). A few keys are HEADed; many are listed (see _listed), which S3 answers 1,000 keys a request."""
        names = sorted(set(rels))
        paths = [f"{self.bucket}/{self.prefix}/{rel}" if self.prefix else f"{self.bucket}/{rel}" for rel in names]
        found, unseen = ({}, paths) if len(paths) < LIST_FROM_KEYS else self._listed(paths)
        found |= self._headed(unseen)
        yield from self._objects(found)

    def _headed(self, paths: list[str]) -> dict[str, dict]:
        from concurrent.futures import ThreadPoolExecutor

        def stat(path: str) -> tuple[str, dict | None]:
            try:
                return path, with_retries(lambda: self.fs.info(path), self.settings.retry_delays,
                                          what=f"stat s3://{path}")
            except FileNotFoundError:
                return path, None

        if not paths:
            return {}
        # HEADs wait on the network, not the CPU: a draining round of a few keys asks for them together.
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(paths)))) as pool:
            return {path: info for path, info in pool.map(stat, paths) if info is not None}

    def _listed(self, paths: list[str]) -> tuple[dict[str, dict], list[str]]:
        """The named keys found by listing the key range they span, in key order, from just before the first; and
        the paths the listing did not reach. The listing stops after about LIST_KEYS_PER_NAMED keys per named one,
        so that a few keys spread over a huge prefix cost a bounded listing and HEADs for the rest. S3 lists in
        UTF-8 byte order, which is the code-point order `sorted` gives the (sorted) paths."""
        from fsspec.asyn import sync

        keys = [p.split("/", 1)[1] for p in paths]
        wanted_keys, budget = set(keys), LIST_KEYS_PER_NAMED * len(keys) + LIST_PAGE_KEYS
        found: dict[str, dict] = {}
        reached = ""  # every key up to this one has been listed

        async def page(start_after: str) -> dict:
            args = {"Bucket": self.bucket, "Prefix": f"{self.prefix}/" if self.prefix else "", "MaxKeys": LIST_PAGE_KEYS}
            return await self.fs._call_s3("list_objects_v2", **args, **({"StartAfter": start_after}
                                                                         if start_after else {}))

        start, listed = keys[0][:-1], 0
        while listed < budget:
            reply = with_retries(lambda s=start: sync(self.fs.loop, page, s), self.settings.retry_delays,
                                 what=f"list s3://{self.bucket}/{self.prefix} from {start!r}")
            contents = reply.get("Contents") or []
            listed += len(contents)
            for item in contents:
                if item["Key"] in wanted_keys:
                    found[f"{self.bucket}/{item['Key']}"] = {"ETag": item.get("ETag"), "size": item.get("Size"),
                                                            "LastModified": item.get("LastModified")}
            if not reply.get("IsTruncated") or not contents:
                return found, []
            start = reached = contents[-1]["Key"]
            if reached >= keys[-1]:
                return found, []
        return found, [p for p, k in zip(paths, keys) if k > reached]

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


def shared_filesystem(settings: Settings):
    """One s3fs filesystem per endpoint, region and credentials in this process (millrace.registry). Building one
    loads botocore's service models (~0.1-0.3 s of CPU), which every batch of a draining round used to pay on its
    worker. It caches no listings (s3_filesystem), so a reused one sees what the bucket holds now. The process id is
    in the key because s3fs' event loop thread does not survive a fork."""
    key = ("s3", os.getpid(), settings.s3_endpoint_url, settings.s3_region, settings.s3_key,
           registry.digest(settings.s3_secret))
    return registry.shared(key, lambda: s3_filesystem(settings))
