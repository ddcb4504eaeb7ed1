"""Retries with explicit delays, for I/O only."""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
log = logging.getLogger("millrace")


def with_retries(fn: Callable[[], T], delays: Sequence[float], what: str,
                 retry_on: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """Call fn; on failure wait delays[0], delays[1], ... between attempts, then re-raise the last error."""
    for attempt, delay in enumerate([*delays, None], start=1):
        try:
            return fn()
        except retry_on as exc:
            if delay is None:
                raise
            log.warning("%s failed (attempt %d/%d): %s; retrying in %.1fs", what, attempt, len(delays) + 1, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
