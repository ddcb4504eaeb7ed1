"""Result caches keyed by the index version: an exact cache, and an opt-in semantic cache of answers.

Every key starts with the index version (physical collection and its last ingest run, serving.index), so an ingest,
a deletion or an alias swap makes every older entry unreachable; entries then age out by TTL and size. In-process
by default; with MILLRACE_REDIS_URL, one Redis shared by all serving replicas. Keys are digests of the request
(never a secret: API keys are not part of any key)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class MemoryCache:
    """Bounded LRU with TTL; the semantic part is a small matrix of query embeddings per index version."""

    def __init__(self, ttl_s: float, max_entries: int, semantic_max: int):
        self.ttl_s, self.max_entries, self.semantic_max = ttl_s, max_entries, semantic_max
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._semantic: dict[str, list[tuple[float, np.ndarray, bytes]]] = {}

    def get(self, version: str, key: str) -> bytes | None:
        full = f"{version}:{key}"
        with self._lock:
            item = self._items.get(full)
            if item is None or item[0] < time.monotonic():
                self._items.pop(full, None)
                return None
            self._items.move_to_end(full)
            return item[1]

    def put(self, version: str, key: str, value: bytes) -> None:
        with self._lock:
            self._items[f"{version}:{key}"] = (time.monotonic() + self.ttl_s, value)
            self._items.move_to_end(f"{version}:{key}")
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def semantic_get(self, version: str, scope: str, vector: np.ndarray, threshold: float) -> bytes | None:
        with self._lock:
            now = time.monotonic()
            entries = [e for e in self._semantic.get(f"{version}:{scope}", []) if e[0] >= now]
            self._semantic[f"{version}:{scope}"] = entries
            if not entries:
                return None
            sims = np.stack([e[1] for e in entries]) @ vector
            best = int(np.argmax(sims))
            return entries[best][2] if sims[best] >= threshold else None

    def semantic_put(self, version: str, scope: str, vector: np.ndarray, value: bytes) -> None:
        with self._lock:
            # Only the current version's entries are worth memory: drop every other version's.
            self._semantic = {k: v for k, v in self._semantic.items() if k.startswith(f"{version}:")}
            entries = self._semantic.setdefault(f"{version}:{scope}", [])
            entries.append((time.monotonic() + self.ttl_s, np.asarray(vector, dtype=np.float32), value))
            del entries[: max(0, len(entries) - self.semantic_max)]


class RedisCache:
    """The same contract on a shared Redis: exact entries with SETEX; the semantic entries of one index version in
    two hashes (vectors, values) and a sorted set of insertion times that bounds their number."""

    PREFIX = "millrace:cache:"

    def __init__(self, client, ttl_s: float, semantic_max: int):
        self.r, self.ttl_s, self.semantic_max = client, ttl_s, semantic_max

    def get(self, version: str, key: str) -> bytes | None:
        return self.r.get(f"{self.PREFIX}{digest(version)}:{key}")

    def put(self, version: str, key: str, value: bytes) -> None:
        self.r.set(f"{self.PREFIX}{digest(version)}:{key}", value, ex=max(1, int(self.ttl_s)))

    def _names(self, version: str, scope: str) -> tuple[str, str, str]:
        base = f"{self.PREFIX}sem:{digest(version, scope)}"
        return f"{base}:vec", f"{base}:val", f"{base}:order"

    def semantic_get(self, version: str, scope: str, vector: np.ndarray, threshold: float) -> bytes | None:
        vecs, vals, _ = self._names(version, scope)
        found = self.r.hgetall(vecs)
        if not found:
            return None
        ids = list(found)
        sims = np.stack([np.frombuffer(found[i], dtype=np.float32) for i in ids]) @ vector
        best = int(np.argmax(sims))
        return self.r.hget(vals, ids[best]) if sims[best] >= threshold else None

    def semantic_put(self, version: str, scope: str, vector: np.ndarray, value: bytes) -> None:
        vecs, vals, order = self._names(version, scope)
        entry = digest(np.asarray(vector, dtype=np.float32).tobytes().hex())
        ttl = max(1, int(self.ttl_s))
        with self.r.pipeline() as p:
            p.hset(vecs, entry, np.asarray(vector, dtype=np.float32).tobytes())
            p.hset(vals, entry, value)
            p.zadd(order, {entry: time.time()})
            for name in (vecs, vals, order):
                p.expire(name, ttl)
            p.execute()
        extra = self.r.zcard(order) - self.semantic_max
        if extra > 0:
            old = self.r.zpopmin(order, extra)
            ids = [i for i, _ in old]
            if ids:
                self.r.hdel(vecs, *ids)
                self.r.hdel(vals, *ids)


def make_cache(settings):
    """The cache the settings ask for: Redis when MILLRACE_REDIS_URL is set, else in-process."""
    url = settings.redis_url.get_secret_value()
    if url:
        from millrace import clients

        return RedisCache(clients.redis(url), settings.cache_ttl_s, settings.semantic_max_entries)
    return MemoryCache(settings.cache_ttl_s, settings.cache_max_entries, settings.semantic_max_entries)
