"""API keys and the per-key rate limit.

Keys come from MILLRACE_API_KEYS and/or a Prefect Secret block (MILLRACE_API_KEYS_BLOCK, read once at start, the only
place serving touches Prefect). Keys are compared as SHA-256 digests in constant time, and a key is known to logs,
Redis and metrics only by a short digest. The limit is a fixed one-minute window per key (per client address when no
keys are configured), counted in Redis when MILLRACE_REDIS_URL is set, so replicas share it. Monitoring is outside
both: /metrics takes its own scrape token (MILLRACE_METRICS_TOKEN) or none, and no probe or scrape is counted.

The fence key is the secret the prompt's fence tag is derived from (serving.prompt.fence_tag)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path

from millrace.config import ConfigError
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
    def __init__(self, keys: list[str], what: str = "API key"):
        self._digests, self.what = [key_digest(k) for k in keys if k], what

    @classmethod
    def of_users(cls, settings: ServeSettings) -> "KeyRing":
        keys = [k.get_secret_value() for k in settings.api_keys]
        if settings.api_keys_block:
            keys += keys_from_block(settings.api_keys_block)
        return cls(keys)

    @classmethod
    def of_scrapers(cls, settings: ServeSettings) -> "KeyRing":
        return cls([settings.metrics_token.get_secret_value()], "scrape token (MILLRACE_METRICS_TOKEN)")

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, authorization: str | None) -> bool:
        try:
            self.check(authorization)
            return True
        except ServingError:
            return False

    def check(self, authorization: str | None) -> str:
        """The caller's identity (a key digest prefix) or ServingError(401)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServingError(401, "unauthorized", f"missing {self.what}: send `Authorization: Bearer <key>`",
                               {"WWW-Authenticate": "Bearer"})
        given = key_digest(token.strip())
        if not any(hmac.compare_digest(given, d) for d in self._digests):
            raise ServingError(401, "unauthorized", f"invalid {self.what}", {"WWW-Authenticate": "Bearer"})
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


FENCE_KEY_FILE = "fence.key"


def fence_key(settings: ServeSettings) -> bytes:
    """MILLRACE_FENCE_KEY, or the key in <home>/fence.key, made once (32 random bytes) by the first process to need it.
    The file appears whole or not at all (written aside, then linked into place), so concurrent starts agree."""
    configured = settings.fence_key.get_secret_value()
    if configured:
        return configured.encode()
    path = Path(settings.home) / FENCE_KEY_FILE
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            aside = path.with_name(f".{FENCE_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # another process made it first: its key is the one
            finally:
                aside.unlink()
        key = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot keep the prompt's fence key in {path} ({exc.strerror}): make MILLRACE_HOME "
                          "writable, or set MILLRACE_FENCE_KEY to a long random string") from exc
    if len(key) < 32:
        raise ConfigError(f"{path} holds no usable fence key: delete it (a new one is made) or set MILLRACE_FENCE_KEY")
    return key.encode()
