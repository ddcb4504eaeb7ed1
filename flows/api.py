"""One Prefect API for a run and every process it spawns."""

from __future__ import annotations

import atexit
import os


def ensure_prefect_api() -> str | None:
    """Start Prefect's ephemeral API here when none is configured, and export its URL.

    Without it each spawned Dask worker would start (and, when killed, orphan) an API server of its own."""
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    atexit.register(server.stop)
    return server.api_url
