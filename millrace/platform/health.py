"""Health probes for the services of the local platform (millrace.platform.control). Each probe answers None when the
service is ready for work, or a short reason why not; none raises, so a wait loop can simply ask again.

Ready means usable, not merely listening: Milvus answers a list_collections, the Dask scheduler has every worker and
each one ran the warm-up preload, the work pool has a worker that is ONLINE for the Prefect server."""

from __future__ import annotations

import socket
import sys

import httpx


def _get(url: str, timeout: float = 3.0) -> httpx.Response | str:
    try:
        return httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} from {url}"


def prefect(api_url: str) -> str | None:
    answer = _get(f"{api_url}/health")
    if isinstance(answer, str):
        return answer
    return None if answer.status_code == 200 and answer.json() is True else f"/health answered {answer.status_code}"


def milvus(uri: str, port: int) -> str | None:
    with socket.socket() as s:
        s.settimeout(1.0)
        if s.connect_ex(("127.0.0.1", port)) != 0:
            return f"nothing listening on port {port}"
    from pymilvus import MilvusClient

    try:  # the proxy listens before the coordinators are ready: only an answered call counts
        client = MilvusClient(uri=uri, timeout=5)
        try:
            client.list_collections()
        finally:
            client.close()
    except Exception as exc:  # any pymilvus error means "not yet"
        return f"list_collections failed: {type(exc).__name__}: {str(exc)[:120]}"
    return None


def preloaded() -> bool:
    """Run on a Dask worker: whether its warm-up preload ran (a failing preload keeps the worker from starting)."""
    return "millrace.platform.warmup" in sys.modules


def dask(address: str, workers: int) -> str | None:
    from distributed import Client

    try:
        with Client(address, timeout=3, set_as_default=False) as client:
            warm = client.run(preloaded)
    except Exception as exc:
        return f"scheduler at {address} not ready: {type(exc).__name__}: {str(exc)[:120]}"
    if len(warm) < workers:
        return f"{len(warm)} of {workers} workers registered (each loads the model and JVM first)"
    if not all(warm.values()):
        return f"workers without the millrace.platform.warmup preload: {sorted(a for a, ok in warm.items() if not ok)}"
    return None


def work_pool(api_url: str, pool: str) -> str | None:
    try:
        answer = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", json={}, timeout=3.0)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} from the Prefect API"
    if answer.status_code == 404:
        return f"work pool {pool} does not exist yet"
    if answer.status_code != 200:
        return f"reading the workers of {pool} answered {answer.status_code}"
    online = [w["name"] for w in answer.json() if w.get("status") == "ONLINE"]
    return None if online else f"no ONLINE worker in pool {pool} yet"


def http_ok(url: str) -> str | None:
    """A service whose GET /health answers 200 when it is up (the relay, the API)."""
    answer = _get(f"{url}/health")
    if isinstance(answer, str):
        return answer
    return None if answer.status_code == 200 else f"/health answered {answer.status_code}"
