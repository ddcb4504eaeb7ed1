"""Ingest soak: a steady stream of S3 uploads through the running platform for `--minutes`, timing each upload until
it is searchable, while sampling the RSS of every platform process every `--sample-s` seconds.

    python bench/soak.py --minutes 10 --every 6        # ~14 min: platform start ~1 min, stream, drain, stop

The platform, moto and the upload/timing code are bench/_platform.py's (shared with bench/freshness.py). Processes are
grouped by the platform service they belong to (honcho's children and their descendants): the prefect worker's
descendants are the flow runs, short-lived, so they are reported apart (count and peak) and not in the flatness check.
"Flat" compares the mean RSS of the first and of the last minute of the stream, and fits a slope (MB/min) past the
first minute (the first runs load code and caches once)."""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import psutil

from _platform import Platform, percentile
from _util import table, write

SERVICES = [("prefect server", "prefect-server"), ("millrace.platform.milvus_server", "milvus"), ("dask scheduler", "dask-scheduler"),
            ("dask worker", "dask-workers"), ("prefect worker", "prefect-worker"), ("intake.relay", "relay"),
            ("serving.server", "api")]


def service_of(proc: psutil.Process) -> str:
    """The platform service a process belongs to: its own command line, else its nearest ancestor's that names one
    (Dask's spawned workers, Milvus' etcd and server binaries); the prefect worker's descendants are flow runs."""
    for depth, p in enumerate([proc, *proc.parents()]):
        line = " ".join(p.cmdline())
        if "honcho" in line:
            return "honcho"
        if name := next((name for key, name in SERVICES if key in line), None):
            return "flow-runs" if name == "prefect-worker" and depth else name
    return "other: " + proc.name()


def sample(home) -> dict:
    """RSS in MB per service, from every process carrying the platform's marker; flow runs counted apart."""
    from millrace.platform import procs

    rss: dict[str, float] = {}
    flows = 0
    for proc in procs.marked(home):
        try:
            name, mb = service_of(proc), proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
        rss[name] = rss.get(name, 0.0) + mb
        flows += name == "flow-runs" and "prefect" in " ".join(proc.cmdline())  # the run, not its helpers
    runs_mb = rss.pop("flow-runs", 0.0)
    return {"rss_mb": {k: round(v, 1) for k, v in rss.items()}, "flow_runs": flows, "flow_runs_rss_mb": round(runs_mb, 1)}


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares MB per minute."""
    if len(points) < 3:
        return None
    mx, my = statistics.fmean(p[0] for p in points), statistics.fmean(p[1] for p in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return round(sum((x - mx) * (y - my) for x, y in points) / den, 2) if den else None


def memory_table(samples: list[dict], minutes: float) -> list[dict]:
    rows = []
    for name in sorted({k for s in samples for k in s["rss_mb"]}):
        pts = [(s["min"], s["rss_mb"][name]) for s in samples if name in s["rss_mb"]]
        first = [y for x, y in pts if x <= 1.0]
        last = [y for x, y in pts if x >= minutes - 1.0]
        rows.append({"process": name, "first_min_mb": round(statistics.fmean(first), 1) if first else None,
                     "last_min_mb": round(statistics.fmean(last), 1) if last else None,
                     "peak_mb": round(max(y for _, y in pts), 1),
                     "slope_mb_per_min": slope([p for p in pts if p[0] >= 1.0])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--every", type=float, default=6.0, help="seconds between uploads")
    ap.add_argument("--sample-s", type=float, default=15.0)
    ap.add_argument("--timeout", type=float, default=180.0, help="wait this long past the last upload")
    ap.add_argument("--wait-ports", type=float, default=600.0, help="wait this long for another Milvus to go")
    ap.add_argument("--max-flow-runs", type=int, default=30, help="stop uploading once this many flow-run "
                    "processes wait at once (a backlog: ~140 MB each, they would fill the machine's memory)")
    args = ap.parse_args()
    uploads = max(1, int(args.minutes * 60 / args.every))
    samples: list[dict] = []
    with Platform(args.wait_ports) as p:
        stop, halt, t0 = threading.Event(), threading.Event(), time.time()

        def sampler() -> None:
            while not stop.is_set():
                if s := sample(p.home):
                    # The whole machine's load: the soak's own plus other people's work (2 cores are easily full).
                    busy = round(psutil.cpu_percent() * (psutil.cpu_count() or 1) / 100, 2)
                    samples.append({"min": round((time.time() - t0) / 60, 2), **s, "machine_busy_cores": busy,
                                    "load_avg_1m": round(os.getloadavg()[0], 1)})
                    if s["flow_runs"] > args.max_flow_runs and not halt.is_set():
                        print(f"{s['flow_runs']} flow runs waiting: backlog, no more uploads", flush=True)
                        halt.set()
                stop.wait(args.sample_s)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        try:
            found = p.stream(uploads, args.every, args.timeout, halt)
        finally:
            stop.set()
            th.join(30)
        fresh, runs, startup = p.ledger_fresh(), p.flow_runs(), p.ep.startup_s
        rows = [{"upload": i, "at_min": round(i * args.every / 60, 2),
                 "searchable_s": round(s, 2) if s is not None else None, "ledger_fresh_s": fresh.get(p.uri(i))}
                for i, s in found.items()]
    times = [r["searchable_s"] for r in rows if r["searchable_s"] is not None]
    stream_min = max(len(rows), 1) * args.every / 60
    mem = memory_table([s for s in samples if s["min"] <= stream_min + 0.1], stream_min)
    firsts = [r["searchable_s"] for r in rows if r["at_min"] < 1 and r["searchable_s"] is not None]
    lasts = [r["searchable_s"] for r in rows if r["at_min"] >= stream_min - 1 and r["searchable_s"] is not None]
    result = {"minutes": args.minutes, "every_s": args.every, "uploads": len(rows), "planned_uploads": uploads,
              "halted_for_backlog": halt.is_set(), "searchable": len(times),
              "p50_s": round(statistics.median(times), 2) if times else None,
              "p95_s": round(percentile(times, 0.95), 2) if times else None,
              "max_s": round(max(times), 2) if times else None,
              "first_min_p50_s": round(statistics.median(firsts), 2) if firsts else None,
              "last_min_p50_s": round(statistics.median(lasts), 2) if lasts else None,
              "flow_runs": runs, "platform_startup_s": round(startup, 1),
              "flow_runs_concurrent_max": max((s["flow_runs"] for s in samples), default=0),
              "flow_run_rss_peak_mb": max((s["flow_runs_rss_mb"] for s in samples), default=0),
              "machine_busy_cores_mean": round(statistics.fmean(s["machine_busy_cores"] for s in samples[1:]), 2)
              if len(samples) > 1 else None,
              "load_avg_1m_mean": round(statistics.fmean(s["load_avg_1m"] for s in samples), 1) if samples else None,
              "memory": mem, "samples": samples, "per_upload": rows}
    print(table(mem, ["process", "first_min_mb", "last_min_mb", "peak_mb", "slope_mb_per_min"]))
    print(f"{len(times)}/{len(rows)} searchable; p50 {result['p50_s']} s, p95 {result['p95_s']} s, max "
          f"{result['max_s']} s (first minute p50 {result['first_min_p50_s']}, last {result['last_min_p50_s']}); "
          f"{runs} drain runs, at most {result['flow_runs_concurrent_max']} flow-run processes at once "
          f"(peak {result['flow_run_rss_peak_mb']} MB together); machine busy {result['machine_busy_cores_mean']} "
          f"cores, load average {result['load_avg_1m_mean']}")
    write("soak", result)


if __name__ == "__main__":
    main()
