"""The clients a process shares: each is built once per process and configuration, then reused. Milvus Lite admits a
single opener per data file, a model or a JVM is expensive to load, and servers prefer reused channels.

Each room builds its own client here, keyed by only the settings that client depends on (a secret enters a key as a
digest, never as its value): the ledger (millrace.ledger.book.shared_ledger), the Milvus store
(millrace.index.store.shared_store), the change queue, the S3 filesystem. millrace.clients is the factory the entry
points use; it answers from the same cache."""

from __future__ import annotations

import hashlib
import threading
from typing import Callable, TypeVar

T = TypeVar("T")
_lock = threading.RLock()
_cache: dict[tuple, object] = {}


def digest(secret) -> str:
    """A short digest of a secret (SecretStr or str) for a cache key; empty for none."""
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret or "")
    return hashlib.sha256(value.encode()).hexdigest()[:16] if value else ""


def shared(key: tuple, build: Callable[[], T]) -> T:
    """The client under `key`, built by `build` the first time."""
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]  # type: ignore[return-value]


def forget(milvus_uri: str | None = None) -> None:
    """Drop cached clients (all, or those of one Milvus URI), closing Milvus connections; for tests and benchmarks."""
    with _lock:
        for key in list(_cache):
            if milvus_uri is None or (key[0] == "milvus" and key[1] == milvus_uri):
                client = _cache.pop(key)
                if key[0] == "milvus":
                    try:
                        client.close()
                    except Exception:  # already closed or unreachable: nothing to release
                        pass
