"""The load side of bench/serve.py: the API server process, concurrent request loops (HTTP and blocking calls),
latency statistics, the server's stage times scraped from /metrics, and CPU used by processes not ours."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from _util import ROOT

COLL, COLS = "scifact", ("n", "p50_ms", "p99_ms", "qps", "other_cpu_cores")


def stats(samples: list[float], wall: float | None = None, q=(50, 99)) -> dict:
    ms = sorted(s * 1000 for s in samples)
    if not ms:
        return {"n": 0}
    cut = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    out = {"n": len(ms), **{f"p{p}_ms": round(cut[p - 1], 2) for p in q}, "mean_ms": round(statistics.fmean(ms), 2)}
    return out | ({"qps": round(len(ms) / wall, 1)} if wall else {})


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def cpu_now() -> tuple[float, float, float]:
    """(wall clock, CPU seconds of the machine, of this process and its children: API servers, Lite, vLLM)."""
    import psutil

    t, me, mine = psutil.cpu_times(), psutil.Process(), 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            mine += sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    return time.perf_counter(), t.user + t.nice + t.system + t.irq + t.softirq, mine


def other_cores(start: tuple) -> float:
    """Cores used since `start` by processes not ours (other people's tests on this machine disturb timings)."""
    end = cpu_now()
    return round(max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]), 2)


@contextmanager
def api_server(home: Path, log: Path, root: Path = ROOT, **env):
    """`python -m serving.server` of the checkout `root` on a free loopback port, MILLRACE_* from `env`; yields its URL
    once /ready is 200."""
    port = free_port()
    full = dict(os.environ, MILLRACE_HOME=str(home), MILLRACE_COLLECTION=COLL,
                **{f"MILLRACE_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in env.items()})
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=root, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not get ready:\n{log.read_text()[-3000:]}")
            try:  # one search first, so the first measured request does not pay for anything left cold
                if httpx.get(url + "/health", timeout=10).status_code == 200:
                    httpx.post(url + "/v1/search", json={"query": "warm-up", "k": 1}, timeout=120).raise_for_status()
                    if httpx.get(url + "/ready", timeout=30).status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # its process group: the Lite engine it started goes too
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def stages(url: str, before: dict | None = None) -> dict:
    """The server's stage histograms (/metrics) as [sum, count]; given an earlier scrape, the mean per stage since
    (ms; embed_batch: queries per forward pass)."""
    now: dict[str, list[float]] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if m := re.match(r'millrace_(?:stage_seconds|(embed_batch)_size)_(sum|count)(?:\{stage="(\w+)"\})? (\S+)', line):
            now.setdefault(m[1] or m[3], [0.0, 0.0])[m[2] == "count"] = float(m[4])
    if before is None:
        return now
    b = {k: before.get(k, [0.0, 0.0]) for k in now}
    return {k: round((s - b[k][0]) / (n - b[k][1]) * (1 if k == "embed_batch" else 1000), 2)
            for k, (s, n) in now.items() if n > b[k][1]}


async def load(url: str, path: str, bodies: list[dict], conc: int, max_s: float) -> dict:
    """`conc` requests in flight (one keep-alive connection each) until `bodies` run out or `max_s` passes; the first
    `conc` bodies warm the connections and are not counted."""
    lat, timings, it = [], [], iter(bodies)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=conc)) as c:
        await asyncio.gather(*(c.post(path, json=next(it)) for _ in range(conc)))
        start = cpu_now()

        async def worker():
            for body in it:
                if time.perf_counter() - start[0] > max_s:
                    return
                t = time.perf_counter()
                r = await c.post(path, json=body)
                lat.append(time.perf_counter() - t)
                timings.append(r.raise_for_status().json().get("timings_ms", {}))

        await asyncio.gather(*(worker() for _ in range(conc)))
        wall, others = time.perf_counter() - start[0], other_cores(start)
    return {**stats(lat, wall), "other_cpu_cores": others, "server_total_p50_ms": median(t["total"] for t in timings)}


def raw_load(fn, items: list, conc: int, max_s: float) -> dict:
    """The same load on a blocking call: `conc` threads, each with one call in flight."""
    lock, lat, pos = threading.Lock(), [], [conc]
    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(fn, items[:conc]))  # warm-up, as in load()
        start = cpu_now()

        def worker():
            while time.perf_counter() - start[0] <= max_s:
                with lock:
                    if pos[0] >= len(items):
                        return
                    item, pos[0] = items[pos[0]], pos[0] + 1
                t = time.perf_counter()
                fn(item)
                lat.append(time.perf_counter() - t)

        for f in [pool.submit(worker) for _ in range(conc)]:
            f.result()
        return {**stats(lat, time.perf_counter() - start[0]), "other_cpu_cores": other_cores(start)}


def md(rows: list[dict], cols: list[str]) -> str:
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows])
