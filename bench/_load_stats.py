"""Shared by bench/locustfile.py (inside the Locust process) and bench/load.py: scraping the API's Prometheus
histograms, CPU seconds of process trees, and turning step snapshots plus per-request records into step rows.

The locustfile snapshots at step boundaries (it owns the clock of the steps); load.py only summarises afterwards, so
both sides must agree on these formats, which is why they live here and not in either file."""

from __future__ import annotations

import math
import re
import statistics
import time
import urllib.request

import psutil

_BUCKET = re.compile(r'millrace_(stage|request)_seconds_(bucket|sum|count)\{([^}]*)\} (\S+)')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(url: str, key: str = "") -> dict:
    """{"stage": {name: {"le": {bound: n}, "sum": s, "count": n}}, "request": {"route status": {...}}}; /metrics
    sits behind the API keys (and their rate limit) when keys are set."""
    out: dict = {"stage": {}, "request": {}}
    req = urllib.request.Request(url.rstrip("/") + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    for m in _BUCKET.finditer(text):
        kind, part, labels, value = m[1], m[2], dict(_LABEL.findall(m[3])), float(m[4])
        key = labels["stage"] if kind == "stage" else f"{labels.get('route')} {labels.get('status')}"
        h = out[kind].setdefault(key, {"le": {}, "sum": 0.0, "count": 0.0})
        if part == "bucket":
            h["le"][labels["le"]] = value
        else:
            h[part] = value
    return out


def merge(scrapes: list[dict]) -> dict:
    """Several replicas' scrapes as one (histograms add)."""
    out: dict = {"stage": {}, "request": {}}
    for s in scrapes:
        for kind in out:
            for key, h in s.get(kind, {}).items():
                acc = out[kind].setdefault(key, {"le": {}, "sum": 0.0, "count": 0.0})
                acc["sum"] += h["sum"]
                acc["count"] += h["count"]
                for le, n in h["le"].items():
                    acc["le"][le] = acc["le"].get(le, 0.0) + n
    return out


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket that holds the rank."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if math.isinf(le):
                return prev_le  # past the last finite bound: all we know is "more than that"
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 1.0)
        prev_le, prev_n = le, n
    return prev_le


def hist_delta(before: dict, after: dict, kind: str = "stage") -> dict:
    """Per stage (or route+status) between two scrapes: n, mean and p50/p95/p99 in ms (bucket-interpolated)."""
    rows = {}
    for key, h in after.get(kind, {}).items():
        b = before.get(kind, {}).get(key, {"le": {}, "sum": 0.0, "count": 0.0})
        n = h["count"] - b["count"]
        if n <= 0:
            continue
        buckets = sorted((float(le), c - b["le"].get(le, 0.0)) for le, c in h["le"].items())
        row = {"n": int(n), "mean_ms": round((h["sum"] - b["sum"]) / n * 1000, 1)}
        for q in (50, 95, 99):
            v = _quantile(q / 100, buckets)
            row[f"p{q}_ms"] = None if v is None else round(v * 1000, 1)
        rows[key] = row
    return rows


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes and all their descendants, alive now."""
    seen, total = set(), 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


def tree_rss_mb(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            total += sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def snapshot(hosts: list[str], groups: dict[str, list[int]], key: str = "") -> dict:
    """Everything a step boundary needs: wall clock, merged /metrics of all replicas, CPU per process group, and the
    machine's total busy CPU (what is not ours is other people's work disturbing the numbers)."""
    t = psutil.cpu_times()
    scrapes = []
    for h in hosts:
        try:
            scrapes.append(scrape(h, key))
        except OSError:
            pass
    return {"t": time.time(), "metrics": merge(scrapes), "cpu": {g: tree_cpu(p) for g, p in groups.items()},
            "machine_cpu": t.user + t.nice + t.system + t.irq + t.softirq}


def pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def step_row(step: dict, records: list) -> dict:
    """One step: users, QPS and latency per endpoint from Locust's per-request records, server stage latency and
    status counts from the /metrics deltas, CPU cores and CPU ms per request per process group."""
    a, b = step["start"], step["end"]
    wall = b["t"] - a["t"]
    mine = [r for r in records if a["t"] <= r[0] < b["t"]]
    http = [r for r in mine if r[3] != -1]  # -1: a derived timing (stream TTFT), not a request of its own
    endpoints = {}
    for name in sorted({r[1] for r in mine}):
        rs = [r for r in mine if r[1] == name]
        ms = [r[2] for r in rs]
        endpoints[name] = {"n": len(rs), "qps": round(len(rs) / wall, 2), "p50_ms": pct(ms, 50),
                           "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99),
                           "errors": sum(r[4] and r[3] != 429 for r in rs), "5xx": sum(500 <= r[3] < 600 for r in rs),
                           "429": sum(r[3] == 429 for r in rs), "no_response": sum(r[3] == 0 for r in rs)}
    n = len(http)
    cpu = {g: b["cpu"][g] - a["cpu"].get(g, 0.0) for g in b["cpu"]}
    ours = sum(cpu.values())
    return {"users": step["users"], "seconds": round(wall, 1), "requests": n, "qps": round(n / wall, 2),
            "p50_ms": pct([r[2] for r in http], 50), "p95_ms": pct([r[2] for r in http], 95),
            "p99_ms": pct([r[2] for r in http], 99),
            # 429s are the rate limit doing its job: counted on their own, not as errors
            "error_rate": round(sum(r[4] and r[3] != 429 for r in http) / n, 4) if n else None,
            "5xx": sum(500 <= r[3] < 600 for r in http), "429": sum(r[3] == 429 for r in http),
            "429_with_retry_after": sum(len(r) > 5 and r[5] for r in http),
            "endpoints": endpoints, "stages": hist_delta(a["metrics"], b["metrics"]),
            "server_status": {k: v["n"] for k, v in hist_delta(a["metrics"], b["metrics"], "request").items()},
            "cpu_cores": {g: round(c / wall, 2) for g, c in cpu.items()},
            "cpu_ms_per_request": {g: round(c / n * 1000, 1) for g, c in cpu.items()} if n else {},
            "other_cpu_cores": round(max(0.0, (b["machine_cpu"] - a["machine_cpu"]) - ours) / wall, 2)}
