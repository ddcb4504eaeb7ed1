"""The one factory for the clients every entry point shares (CLI, flows, evaluation, serving).

Each client is built lazily, once per process and configuration, and reused (millrace.registry holds them): Milvus
Lite admits a single opener per data file, a model or a JVM is expensive to load, and servers prefer reused
channels. The rooms below build the clients they need from the same cache (the ledger, the store, the queue, the
S3 filesystem), so a process holds one of each whichever door asked first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from millrace import registry
from millrace.config import Settings

if TYPE_CHECKING:
    from millrace.documents.chunk import Chunker
    from millrace.documents.embed import Embedder
    from millrace.documents.extract import Extractor
    from millrace.events.queue import ChangeQueue
    from millrace.index.store import MilvusStore
    from millrace.ledger.book import Ledger
    from millrace.sources.base import Source


def model_key(settings: Settings) -> tuple:
    return (settings.model, settings.device, settings.embed_backend, settings.embed_threads, settings.embed_batch_size)


def milvus_store(settings: Settings, collection: str | None = None) -> "MilvusStore":
    """The store for a collection; one client per Milvus URI, database and credentials in this process."""
    from millrace.index.store import shared_store

    return shared_store(settings, collection)


def ledger(settings: Settings) -> "Ledger":
    from millrace.ledger.book import shared_ledger

    return shared_ledger(settings)


def change_queue(settings: Settings) -> "ChangeQueue":
    from millrace.events.queue import shared_queue

    return shared_queue(settings)


def embedder(settings: Settings) -> "Embedder":
    from millrace.documents.embed import Embedder

    return registry.shared(("embedder", *model_key(settings)), lambda: Embedder(settings))


def chunker(settings: Settings) -> "Chunker":
    from millrace.documents.chunk import Chunker

    key = ("chunker", settings.model, settings.chunk_size, settings.chunk_overlap)
    return registry.shared(key, lambda: Chunker(settings))


def extractor(settings: Settings) -> "Extractor":
    from millrace.documents.extractors import make_extractor

    key = ("extractor", settings.tika_endpoint, settings.tika_jar, settings.tika_heap, settings.parse_timeout_s,
           settings.max_text_chars)
    return registry.shared(key, lambda: make_extractor(settings))


def redis(url: str):
    """The Redis client of this process for one URL (serving caches and rate limits). Short timeouts: a cache that
    hangs would make every request hang, and a failed cache call is only a miss."""
    import redis as redis_lib

    return registry.shared(("redis", registry.digest(url)), lambda: redis_lib.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=1.0, health_check_interval=30))


def s3_filesystem(settings: Settings):
    """One s3fs filesystem per endpoint, region and credentials in this process (millrace.sources.s3)."""
    from millrace.sources.s3 import shared_filesystem

    return shared_filesystem(settings)


def source(uri: str, settings: Settings) -> "Source":
    """A fresh Source (cheap; S3 sources build their filesystem lazily)."""
    from millrace.sources.base import open_source

    return open_source(uri, settings)


def forget(settings: Settings | None = None) -> None:
    """Drop cached clients (all, or those of one Milvus URI), closing Milvus connections; for tests and benchmarks."""
    registry.forget(None if settings is None else settings.resolved_milvus_uri)
