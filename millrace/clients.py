"""The one factory for the clients every entry point shares (CLI, flows, evaluation, serving).

Each client is built lazily, once per process and configuration, and reused: Milvus Lite admits a single opener per
data file, a model or a JVM is expensive to load, and servers prefer reused channels. Cache keys hold only the
settings a client depends on; a secret enters a key as a digest, never as its value."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import TYPE_CHECKING

from millrace.config import Settings

if TYPE_CHECKING:
    from millrace.events.queue import ChangeQueue
    from millrace.documents.chunk import Chunker
    from millrace.documents.embed import Embedder
    from millrace.documents.extract import Extractor
    from millrace.ledger.book import Ledger
    from millrace.sources.base import Source
    from millrace.index.store import MilvusStore

_lock = threading.RLock()
_cache: dict[tuple, object] = {}


def _digest(secret) -> str:
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret or "")
    return hashlib.sha256(value.encode()).hexdigest()[:16] if value else ""


def _get(key: tuple, build):
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def model_key(settings: Settings) -> tuple:
    return (settings.model, settings.device, settings.embed_backend, settings.embed_threads, settings.embed_batch_size)


def milvus_store(settings: Settings, collection: str | None = None) -> "MilvusStore":
    """The store for a collection; one client per Milvus URI, database and credentials in this process."""
    from millrace.index.store import MilvusStore

    name = collection or settings.collection
    key = ("milvus", settings.resolved_milvus_uri, settings.milvus_db, _digest(settings.milvus_token),
           settings.milvus_index, settings.milvus_metric, settings.full_text, name)
    return _get(key, lambda: MilvusStore(settings, name))


def ledger(settings: Settings) -> "Ledger":
    from millrace.ledger.book import Ledger

    return _get(("ledger", settings.resolved_ledger_url), lambda: Ledger(settings.resolved_ledger_url))


def change_queue(settings: Settings) -> "ChangeQueue":
    from millrace.events.queue import ChangeQueue

    return _get(("queue", settings.resolved_ledger_url), lambda: ChangeQueue(settings.resolved_ledger_url))


def embedder(settings: Settings) -> "Embedder":
    from millrace.documents.embed import Embedder

    return _get(("embedder", *model_key(settings)), lambda: Embedder(settings))


def chunker(settings: Settings) -> "Chunker":
    from millrace.documents.chunk import Chunker

    return _get(("chunker", settings.model, settings.chunk_size, settings.chunk_overlap), lambda: Chunker(settings))


def extractor(settings: Settings) -> "Extractor":
    from millrace.documents.extract import make_extractor

    key = ("extractor", settings.tika_endpoint, settings.tika_jar, settings.tika_heap, settings.parse_timeout_s,
           settings.max_text_chars)
    return _get(key, lambda: make_extractor(settings))


def redis(url: str):
    """The Redis client of this process for one URL (serving caches and rate limits). Short timeouts: a cache that
    hangs would make every request hang, and a failed cache call is only a miss."""
    import redis as redis_lib

    return _get(("redis", _digest(url)), lambda: redis_lib.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=1.0, health_check_interval=30))


def s3_filesystem(settings: Settings):
    """One s3fs filesystem per endpoint, region and credentials in this process. Building one loads botocore's
    service models (~0.1-0.3 s of CPU), which every batch of a draining round used to pay on its worker. It caches no
    listings (millrace.sources.s3.s3_filesystem), so a reused one sees what the bucket holds now. The process id is in
    the key because s3fs' event loop thread does not survive a fork."""
    from millrace.sources.s3 import s3_filesystem as build

    key = ("s3", os.getpid(), settings.s3_endpoint_url, settings.s3_region, settings.s3_key,
           _digest(settings.s3_secret))
    return _get(key, lambda: build(settings))


def source(uri: str, settings: Settings) -> "Source":
    """A fresh Source (cheap; S3 sources build their filesystem lazily)."""
    from millrace.sources.base import open_source

    return open_source(uri, settings)


def forget(settings: Settings | None = None) -> None:
    """Drop cached clients (all, or those of one Milvus URI), closing Milvus connections; for tests and benchmarks."""
    with _lock:
        for key in list(_cache):
            if settings is None or (key[0] == "milvus" and key[1] == settings.resolved_milvus_uri):
                client = _cache.pop(key)
                if key[0] == "milvus":
                    try:
                        client.close()
                    except Exception:  # already closed or unreachable: nothing to release
                        pass
