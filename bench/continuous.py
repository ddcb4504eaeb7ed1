"""Continuous indexing against batch, side by side on one running platform: the upload rate the drain sustains, a
burst, and a soak, each compared with `millrace ingest` of the same kind of documents measured in the same run.

    python bench/continuous.py --batch 200 --rates 0.5,1,1.5,2,3 --step-s 300 --burst 2000 --soak-s 600

1. Batch: N documents uploaded quietly (the change queue is emptied of them), then `millrace ingest` of their prefix
   on the platform's standing Dask workers and Milvus: docs/s, the yardstick.
2. Rate steps: uploads at each rate (absolute uploads/s) for --step-s seconds. Freshness is upload -> the ledger's
   commit of that document (documents.indexed_at, polled every 0.5 s; commit is when a search can see it), the queue
   depth is sampled every second. A step is sustainable when its p95 <= 30 s and the queue is not growing (the mean
   depth of the step's last quarter is at most 1.25 x its second quarter's + 2, the first quarter being the ramp-up,
   and every upload got indexed). Between steps
   the queue is left to empty, so steps do not inherit a backlog.
   With --wiring sqs the bucket notifies an SQS queue that `python -m intake.sqs` drains into the change queue
   (the depth then counts the messages still in SQS too); the default is SNS to the platform's relay.
3. Burst: --burst uploads as fast as 8 threads put them; time from the first upload to the last commit, against a
   batch `millrace ingest` of the same number of files measured just before.
4. Soak: --soak-s at 80 % of the highest sustainable rate; RSS per platform service and flow-run processes at once.

Reports JSON (bench/results/continuous.json) and a plot of rate against freshness and queue depth."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _platform import WIRINGS, Platform, percentile, text
from _util import ROOT, table, write
from soak import memory_table, sample


def settings_of(p: Platform):
    from millrace.config import load_settings

    return load_settings(home=p.ep.home, milvus_uri=p.ep.milvus_uri)


def upload(p: Platform, key: str, i: int) -> float:
    import boto3

    client = getattr(_local, "s3", None) or boto3.client("s3", **p.creds)
    _local.s3 = client
    t = time.time()
    client.put_object(Bucket=p.bucket, Key=key, Body=text(i, p.tag).encode())
    return t


_local = threading.local()


def committed(p: Platform, keys: dict[str, float]) -> dict[str, float]:
    """key -> the ledger's commit time, for the keys that are indexed."""
    from millrace import clients
    from millrace.uris import s3_uri

    s = settings_of(p)
    by_uri = {s3_uri(p.bucket, k): k for k in keys}
    rows = clients.ledger(s).rows_for(_physical(s), [_doc(u) for u in by_uri])
    return {by_uri[r["source_uri"]]: r["indexed_at"] for r in rows.values()
            if r["state"] == "indexed" and r["source_uri"] in by_uri}


def _physical(s) -> str:
    from millrace.index import versions

    return versions.active_physical(s)


def _doc(uri: str) -> str:
    from millrace.documents.records import doc_id_for

    return doc_id_for(uri)


def depth(p: Platform) -> int:
    """Changes waiting: in the change queue, and (SQS wiring) still in SQS on their way to it."""
    from millrace import clients

    s = settings_of(p)
    return clients.change_queue(s).stats(s.collection).pending + p.in_flight()


def wait_empty(p: Platform, timeout: float) -> None:
    deadline = time.time() + timeout
    while depth(p) and time.time() < deadline:
        time.sleep(1)


def batch_ingest(p: Platform, prefix: str, n: int) -> dict:
    """n uploads under prefix (their changes drained first), then a timed `millrace ingest` of the prefix."""
    keys = {f"{prefix}/doc {i}.txt": 0.0 for i in range(n)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: upload(p, kv[1], 10_000_000 + kv[0]), enumerate(keys)))
    time.sleep(2)
    wait_empty(p, 1800)
    # The drain indexed them already: a batch ingest would find them unchanged. Ingest into a second collection.
    env = {**p.cli_env(), "MILLRACE_COLLECTION": f"batch_{p.tag}_{prefix.replace('/', '_')}"}
    before, t = p.cpu_seconds(), time.perf_counter()
    subprocess.run([str(Path(ROOT, ".venv", "bin", "millrace")), "ingest", f"s3://{p.bucket}/{prefix}"], env=env,
                   check=True, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t
    return {"docs": n, "seconds": round(seconds, 2), "docs_per_s": round(n / seconds, 3),
            "cpu_s": cpu_delta(before, p.cpu_seconds())}


def step(p: Platform, rate: float, seconds: float, label: str, tail_s: float = 120.0) -> dict:
    """Uploads at `rate`/s for `seconds`; per-upload commit latency and the queue depth each second."""
    uploaded: dict[str, float] = {}
    depths: list[tuple[float, int]] = []
    stop = threading.Event()

    def feeder() -> None:
        t0, i = time.time(), 0
        with ThreadPoolExecutor(8) as pool:
            while time.time() - t0 < seconds:
                due = t0 + i / rate
                if (wait := due - time.time()) > 0:
                    time.sleep(wait)
                key = f"{label}/up {i}.txt"
                pool.submit(lambda k=key, n=i: uploaded.__setitem__(k, upload(p, k, n)))
                i += 1

    def sampler() -> None:
        t0 = time.time()
        while not stop.is_set():
            try:
                depths.append((time.time() - t0, depth(p)))
            except Exception:
                pass
            stop.wait(1.0)

    threading.Thread(target=sampler, daemon=True).start()
    feed = threading.Thread(target=feeder, daemon=True)
    feed.start()
    found: dict[str, float] = {}
    deadline = None
    while True:
        # A copy first: the feeder's threads add to `uploaded` meanwhile (dict() copies without yielding the GIL).
        found.update(committed(p, {k: v for k, v in dict(uploaded).items() if k not in found}))
        if not feed.is_alive():
            deadline = deadline or time.time() + tail_s
            if len(found) >= len(uploaded) or time.time() > deadline:
                break
        time.sleep(0.5)
    stop.set()
    lat = [found[k] - uploaded[k] for k in found]
    # Growing: the last quarter's mean depth above the second's by a quarter (+2). The first quarter is the ramp
    # from an empty queue to the step's working depth, so comparing with it called every steady step growing.
    within = [d for t, d in depths if t <= seconds]
    quarter = max(1, len(within) // 4)
    first, last = within[quarter:2 * quarter], within[-quarter:]
    growing = bool(first and last and statistics.fmean(last) > 1.25 * statistics.fmean(first) + 2)
    p95 = round(percentile(lat, 0.95), 2) if lat else None
    return {"rate_per_s": rate, "uploads": len(uploaded), "indexed": len(found),
            "p50_s": round(statistics.median(lat), 2) if lat else None, "p95_s": p95,
            "max_s": round(max(lat), 2) if lat else None, "queue_max": max((d for _, d in depths), default=0),
            "queue_second_quarter": round(statistics.fmean(first), 1) if first else 0,
            "queue_last_quarter": round(statistics.fmean(last), 1) if last else 0, "queue_growing": growing,
            "sustainable": bool(lat) and len(found) == len(uploaded) and p95 is not None and p95 <= 30 and not growing,
            "depths": depths}


def burst(p: Platform, n: int) -> dict:
    keys = [f"burst/b {i}.txt" for i in range(n)]
    uploaded: dict[str, float] = {}
    t0 = time.time()
    with ThreadPoolExecutor(8) as pool:
        for k, t in zip(keys, pool.map(lambda kv: upload(p, kv[1], 20_000_000 + kv[0]), enumerate(keys))):
            uploaded[k] = t
    put_s = time.time() - t0
    found: dict[str, float] = {}
    deadline = time.time() + 3600
    while len(found) < n and time.time() < deadline:
        found.update(committed(p, {k: v for k, v in uploaded.items() if k not in found}))
        time.sleep(1)
    drained = max(found.values()) - t0 if found else None
    return {"uploads": n, "upload_s": round(put_s, 1), "indexed": len(found),
            "drain_s": round(drained, 1) if drained else None}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per kind of process between two Platform.cpu_seconds() snapshots, largest first."""
    spent = {k: round(v - before.get(k, 0.0), 1) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in spent.items() if v >= 0.1), key=lambda kv: -kv[1]))


def round_costs(p: Platform) -> dict:
    """Where a drain round's time goes, from the ledger's run summaries (phase_seconds), for rounds of one change
    and for all rounds: the per-round fixed cost is what a round of one pays beyond its document."""
    import json as _json

    from sqlalchemy import select

    from millrace import clients
    from millrace.ledger.book import runs

    s = settings_of(p)
    with clients.ledger(s).engine.connect() as conn:
        rows = conn.execute(select(runs.c.run_id, runs.c.summary).where(runs.c.run_id.like("%-r%-%"))).all()
    out: dict = {}
    for label, keep in (("one_change", lambda m: m.get("seen") == 1), ("all", lambda m: True)):
        summaries = [m for m in (_json.loads(r.summary or "{}") for r in rows) if m and keep(m)]
        phases = sorted({k for m in summaries for k in m.get("phase_seconds", {})})
        out[label] = {"rounds": len(summaries),
                      "mean_seconds": round(statistics.fmean(m["seconds"] for m in summaries), 3) if summaries else None,
                      **{f"mean_{k}_s": round(statistics.fmean(m["phase_seconds"].get(k, 0.0) for m in summaries), 3)
                         for k in phases}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=200, help="documents of the batch-ingest yardstick")
    ap.add_argument("--rates", default="0.5,1,1.5,2,3", help="upload rates (per second) to step through")
    ap.add_argument("--step-s", type=float, default=300.0)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--soak-s", type=float, default=600.0)
    ap.add_argument("--soak-rate", type=float, default=0.0,
                    help="uploads/s of the soak (default: 80 %% of the highest sustainable step)")
    ap.add_argument("--wiring", choices=WIRINGS, default="relay",
                    help="S3 -> SNS -> the platform's relay, or S3 -> SQS -> python -m intake.sqs")
    ap.add_argument("--wait-ports", type=float, default=600.0)
    args = ap.parse_args()
    result: dict = {"args": vars(args)}
    with Platform(args.wait_ports, wiring=args.wiring) as p:
        result["batch"] = batch_ingest(p, "batch", args.batch)
        print(f"batch ingest: {result['batch']}", flush=True)
        steps = []
        for rate in [float(r) for r in args.rates.split(",")]:
            s = step(p, rate, args.step_s, f"rate{rate:g}")
            print(table([s], ["rate_per_s", "uploads", "indexed", "p50_s", "p95_s", "queue_max",
                              "queue_last_quarter", "sustainable"]), flush=True)
            steps.append(s)
            wait_empty(p, 900)
            if len(steps) >= 2 and not steps[-1]["sustainable"] and not steps[-2]["sustainable"]:
                break
        result["steps"] = steps
        ok = [s["rate_per_s"] for s in steps if s["sustainable"]]
        result["sustainable_rate_per_s"] = max(ok) if ok else 0.0
        result["sustainable_vs_batch"] = round(result["sustainable_rate_per_s"] / result["batch"]["docs_per_s"], 3)
        if args.burst:
            result["burst_batch"] = batch_ingest(p, "burstbatch", args.burst)
            before = p.cpu_seconds()
            result["burst"] = burst(p, args.burst)
            result["burst"]["cpu_s"] = cpu_delta(before, p.cpu_seconds())  # where the burst's CPU went
            print("CPU seconds: batch", result["burst_batch"]["cpu_s"], "\nburst", result["burst"]["cpu_s"], flush=True)
            b = result["burst"]
            result["burst_vs_batch"] = round(b["drain_s"] / result["burst_batch"]["seconds"], 3) \
                if b["drain_s"] else None
            # The same bar against the bigger batch, whose fixed start-up weighs less in its docs/s.
            result["sustainable_vs_burst_batch"] = round(
                result["sustainable_rate_per_s"] / result["burst_batch"]["docs_per_s"], 3)
        soak_rate = args.soak_rate or 0.8 * result["sustainable_rate_per_s"]
        if args.soak_s and soak_rate:
            samples, stop, t0 = [], threading.Event(), time.time()

            def sampler() -> None:
                while not stop.is_set():
                    got = sample(p.home)
                    got["rss_mb"]["flow-runs"] = got["flow_runs_rss_mb"]  # the drain's own process: it lives on
                    samples.append({"min": round((time.time() - t0) / 60, 2), **got})
                    stop.wait(15)

            th = threading.Thread(target=sampler, daemon=True)
            th.start()
            soak = step(p, soak_rate, args.soak_s, "soak")
            stop.set()
            th.join(30)
            soak["memory"] = memory_table(samples, args.soak_s / 60)
            soak["flow_runs_concurrent_max"] = max((s["flow_runs"] for s in samples), default=0)
            result["soak"] = soak
        result["drain_runs"] = p.flow_runs()
        result["round_costs"] = round_costs(p)
    print(table(result["steps"], ["rate_per_s", "uploads", "indexed", "p50_s", "p95_s", "queue_max", "sustainable"]))
    print(f"batch {result['batch']['docs_per_s']} docs/s; sustainable {result['sustainable_rate_per_s']}/s = "
          f"{result['sustainable_vs_batch']} x batch ({result.get('sustainable_vs_burst_batch')} x the burst's "
          f"batch); burst {result.get('burst')} vs batch {result.get('burst_batch')}: {result.get('burst_vs_batch')} x")
    if "soak" in result:
        print({k: v for k, v in result["soak"].items() if k not in ("depths", "memory")}, "\n", result["soak"]["memory"])
    write("continuous", result)
    try:
        from plots import plot_rate_curve

        plot_rate_curve(result)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
