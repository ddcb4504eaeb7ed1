"""API keys and the per-key rate limit.

Keys come from MILLRACE_API_KEYS and/or a Prefect Secret block (MILLRACE_API_KEYS_BLOCK, read once at start, the only
place serving touches Prefect). Keys are compared as SHA-256 digests in constant time, and a key is known to logs,
Redis and metrics only by a short digest. The limit is a fixed one-minute window per key (per client address when no
keys are configured), counted in Redis when MILLRACE_REDIS_URL is set, so replicas share it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

from serving.config import ServeSettings
from serving.errors import ServingError


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_from_block(name: str) -> list[str]:
    """A Prefect Secret block holding one key, or a JSON list of keys."""
    from prefect.blocks.system import Secret  # only when a block is asked for: serving runs without Prefect

    value = Secret.load(name).get()
    if isinstance(value, str) and value.strip().startswith("["):
        value = json.loads(value)
    return [str(v) for v in (value if isinstance(value, list) else [value])]


class KeyRing:
    def __init__(self, settings: ServeSettings):
        keys = [k.get_secret_value() for k in settings.api_keys]
        if settings.api_keys_block:
            keys += keys_from_block(settings.api_keys_block)
        self._digests = [key_digest(k) for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> str:
        """The caller's identity (a key digest prefix) or ServingError(401)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServingError(401, "unauthorized", "missing API key: send `Authorization: Bearer <key>`",
                               {"WWW-Authenticate": "Bearer"})
        given = key_digest(token.strip())
        if not any(hmac.compare_digest(given, d) for d in self._digests):
            raise ServingError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})
        return given[:16]


class RateLimiter:
    WINDOW_S = 60

    def __init__(self, settings: ServeSettings):
        self.limit = settings.rate_limit_per_min
        url = settings.redis_url.get_secret_value()
        self._redis = None
        if url and self.limit:
            from millrace import clients

            self._redis = clients.redis(url)
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}  # who -> (window, count)

    def _count(self, who: str, window: int) -> int:
        if self._redis is not None:
            name = f"millrace:rate:{who}:{window}"
            with self._redis.pipeline() as p:
                p.incr(name)
                p.expire(name, self.WINDOW_S * 2)
                return int(p.execute()[0])
        with self._lock:
            seen_window, count = self._counts.get(who, (window, 0))
            count = count + 1 if seen_window == window else 1
            self._counts[who] = (window, count)
            if len(self._counts) > 100_000:  # forget callers of past windows
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            return count

    async def acheck(self, who: str) -> None:
        """`check` from the event loop: a Redis round trip goes to a worker thread."""
        if not self.limit:
            return
        if self._redis is None:
            return self.check(who)
        from anyio import to_thread

        await to_thread.run_sync(self.check, who)

    def check(self, who: str) -> None:
        """Counts one request of `who`; ServingError(429) with Retry-After once past the limit."""
        if not self.limit:
            return
        now = time.time()
        window = int(now // self.WINDOW_S)
        if self._count(who, window) > self.limit:
            retry = max(1, int((window + 1) * self.WINDOW_S - now) + 1)
            raise ServingError(429, "rate_limited", f"rate limit of {self.limit} requests a minute reached; "
                                                    f"retry in {retry} s", {"Retry-After": str(retry)})
