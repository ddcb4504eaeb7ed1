"""The one retry layer for I/O calls: retry what can succeed next time, never mistakes.

Every Milvus, S3 and tika-server call goes through `with_retries` exactly once; the clients underneath are configured
not to retry themselves (pymilvus `retry_times=0`, botocore `total_max_attempts=1`, s3fs `retries=1`), so a dead
service costs len(delays) + 1 attempts, not their product."""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
log = logging.getLogger("millrace")


class TransientError(Exception):
    """Raised by our own code for a condition that may clear by itself (a busy or restarting service)."""


# Mistakes in settings or data fail the same way every time. Checked before the transient rules, so a ConfigError
# wrapping a refused connection ("cannot reach Milvus ...") is final.
_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    ValueError, TypeError, KeyError, LookupError, AttributeError, NotImplementedError, AssertionError,
    FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
)
_PERMANENT_NAMES = {
    "ConfigError", "NoCredentialsError", "PartialCredentialsError", "ParamValidationError", "InvalidURL",
    "MissingSchema", "InvalidSchema", "InvalidHeader", "UnsupportedProtocol", "ParamError",
    "DataTypeNotMatchException", "SchemaNotReadyException", "CollectionNotExistException",
}
# Class names anywhere in an exception's MRO that mean "the network or the service had a moment": builtins
# (ConnectionError covers refused/reset/aborted, TimeoutError covers socket.timeout and asyncio timeouts), botocore,
# requests, urllib3, httpx, aiohttp, fsspec. Matched by name so that none of those libraries must be importable.
_TRANSIENT_NAMES = {
    "ConnectionError", "TimeoutError", "TransientError", "IncompleteRead", "RemoteDisconnected",
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ProxyConnectionError", "ResponseStreamingError", "ResponseParserError",
    "Timeout", "ConnectTimeout", "ReadTimeout", "ChunkedEncodingError", "NewConnectionError", "ProtocolError",
    "TimeoutException", "NetworkError", "RemoteProtocolError", "PoolTimeout",
    "ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError", "ClientPayloadError",
    "FSTimeoutError", "MilvusUnavailableException",
}
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                     errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.EAGAIN, errno.EBUSY,
                     getattr(errno, "EREMOTEIO", errno.EIO)}  # s3fs maps 503 SlowDown to EBUSY, 500 to EREMOTEIO
_THROTTLE_CODES = {"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "SlowDown",
                   "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
                   "InternalError", "ServiceUnavailable", "PriorRequestNotComplete", "BandwidthLimitExceeded"}
_GRPC_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"}
# Milvus server error codes (pkg/util/merr) the server marks retriable: service unavailable, request limit, rate limit.
_MILVUS_TRANSIENT_CODES = {2, 4, 8}
# "collection not loaded" too: a restarted Milvus reloads its loaded collections in the background, and answers that
# meanwhile (seen right after a standalone restart). MilvusStore loads the collection itself on that answer; this
# covers the race where a call lands between its load and the server's own.
_MILVUS_TRANSIENT_TEXT = ("server unavailable", "service unavailable", "service not ready", "rate limit",
                          "statuscode.unavailable", "fail connecting to server", "connection refused",
                          "collection not loaded")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes/contexts, each once: pymilvus raises `e from e`, a cycle."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _http_status(exc: BaseException) -> tuple[int | None, str]:
    """Status and error code of an HTTP-ish error: botocore ClientError, requests/httpx HTTPStatusError."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore
        meta, error = response.get("ResponseMetadata") or {}, response.get("Error") or {}
        return meta.get("HTTPStatusCode"), str(error.get("Code") or "")
    status = getattr(response, "status_code", None) if response is not None else None
    return (status if isinstance(status, int) else None), ""


def _classify(exc: BaseException) -> bool | None:
    """True: may succeed on retry; False: will not; None: this link of the chain does not say."""
    names = _names(exc)
    if names & _PERMANENT_NAMES or isinstance(exc, _PERMANENT_TYPES):
        return False
    if "MilvusException" in names:
        if getattr(exc, "is_input_error", False):
            return False
        code = getattr(exc, "code", None)
        grpc_name = getattr(code, "name", None)
        if getattr(exc, "retriable", False) or grpc_name in _GRPC_TRANSIENT or code in _MILVUS_TRANSIENT_CODES:
            return True
        if any(text in str(getattr(exc, "message", exc)).lower() for text in _MILVUS_TRANSIENT_TEXT):
            return True
        return None  # maybe its cause (a grpc error) says more
    code_fn = getattr(exc, "code", None)
    if "RpcError" in names and callable(code_fn):  # grpc
        try:
            return getattr(code_fn(), "name", "") in _GRPC_TRANSIENT
        except Exception:  # an RpcError without a status: nothing to learn from it
            return None
    status, code = _http_status(exc)
    if code in _THROTTLE_CODES:
        return True
    if status is not None:
        return status in (408, 429) or (500 <= status < 600 and status != 501)
    if names & _TRANSIENT_NAMES:
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in _TRANSIENT_ERRNOS or None
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether calling again may succeed: a refused or reset connection, a timeout, HTTP 5xx/429, throttling, Milvus
    unavailable or rate-limited. Configuration and data errors (ConfigError, ValueError, KeyError, missing files,
    refused credentials, ...) are not, and neither is anything unknown. The first link of the __cause__/__context__
    chain that decides wins, so a ConfigError raised from a refused connection is final."""
    for link in exception_chain(exc):
        verdict = _classify(link)
        if verdict is not None:
            return verdict
    return False


_EXHAUSTED = "_millrace_retries_exhausted"


def _exhausted(exc: BaseException) -> bool:
    return any(getattr(link, _EXHAUSTED, False) for link in exception_chain(exc))


def backoff(delays: Sequence[float], attempt: int, jitter: float = 0.5) -> float:
    """The wait after failed attempt `attempt` (1-based): the configured delay scaled by 1 +- jitter, so that many
    workers failing together do not come back together."""
    base = float(delays[min(attempt, len(delays)) - 1])
    return max(0.0, base * random.uniform(1.0 - jitter, 1.0 + jitter))


def with_retries(fn: Callable[[], T], delays: Sequence[float], what: str,
                 retry_on: tuple[type[BaseException], ...] | None = None, *,
                 classify: Callable[[BaseException], bool] = is_transient, jitter: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call fn, at most len(delays) + 1 times, waiting about delays[i] (+-jitter) after failure i; only failures
    that `classify` calls transient (and that are `retry_on` instances, when given) are retried. The last error is
    re-raised, marked so that an enclosing with_retries does not retry it again."""
    attempts = len(delays) + 1
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            retryable = ((retry_on is None or isinstance(exc, retry_on)) and not _exhausted(exc) and classify(exc))
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            if not retryable:
                log.debug("%s failed, not retried (not transient): %s", what, error)
                raise
            if attempt == attempts:
                log.warning("%s failed (attempt %d/%d): %s; giving up", what, attempt, attempts, error)
                try:
                    setattr(exc, _EXHAUSTED, True)
                except AttributeError:  # an exception type with __slots__: an outer layer may retry it once more
                    pass
                raise
            wait = backoff(delays, attempt, jitter)
            log.warning("%s failed (attempt %d/%d): %s; retrying in %.1fs", what, attempt, attempts, error, wait)
            sleep(wait)
    raise AssertionError("unreachable")
