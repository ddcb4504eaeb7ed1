"""Caches keyed by the index version, in-process and in a real Redis: a new version never sees older entries."""

from __future__ import annotations

import numpy as np
import pytest

from millrace import clients
from serving.cache import MemoryCache, RedisCache, digest


def unit(*values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def exercise(cache) -> None:
    cache.put("c@1.done", "k", b"answer")
    assert cache.get("c@1.done", "k") == b"answer"
    assert cache.get("c@2.running", "k") is None  # an ingest started: the old entry is unreachable
    cache.semantic_put("c@1.done", "scope", unit(1, 0, 0), b"near")
    assert cache.semantic_get("c@1.done", "scope", unit(1, 0.05, 0), 0.95) == b"near"
    assert cache.semantic_get("c@1.done", "scope", unit(0, 1, 0), 0.95) is None
    assert cache.semantic_get("c@1.done", "other", unit(1, 0, 0), 0.95) is None
    assert cache.semantic_get("c@2.done", "scope", unit(1, 0, 0), 0.95) is None
    for i in range(10):  # bounded: the oldest semantic entries go first
        cache.semantic_put("c@1.done", "scope", unit(0, 1, i + 1), f"v{i}".encode())
    assert cache.semantic_get("c@1.done", "scope", unit(1, 0, 0), 0.95) is None


@pytest.mark.unit
def test_memory_cache():
    cache = MemoryCache(ttl_s=60, max_entries=3, semantic_max=5)
    exercise(cache)
    for i in range(5):
        cache.put("v", str(i), b"x")
    assert cache.get("v", "0") is None and cache.get("v", "4") == b"x"
    expired = MemoryCache(ttl_s=-1, max_entries=3, semantic_max=5)
    expired.put("v", "k", b"x")
    assert expired.get("v", "k") is None


@pytest.mark.integration
def test_redis_cache(redis_url):
    client = clients.redis(redis_url)
    exercise(RedisCache(client, ttl_s=60, semantic_max=5))
    assert 0 < client.ttl(f"millrace:cache:{digest('c@1.done')}:k") <= 60
