"""Load and capacity of `millrace serve` under Locust: a ramp of users in steps until saturation, a rate-limited phase,
a py-spy profile at saturation, and capacity with 1 vs 2 API replicas and 1 vs 2 vLLM instances, over a SciFact index
with the tiny vLLM (CPU) on loopback.

    python bench/load.py                                   # full: steps 1..64 users x 40 s, holds of 45 s (~15-17 min)
    python bench/load.py --steps 1,4 --step-s 20 --hold-s 35 --skip-vllm2    # a quick check of the machinery

Users (bench/locustfile.py) send /v1/search, /v1/chat/completions and its streamed form 2:1:1, closed loop, every
question new to the server (no cache or memo hides work), answers `--max-tokens` long (ignore_eos). Each API replica
serves its own copy of the index (Milvus Lite admits one opener per file), so "2 replicas" is 2 API processes each
with its Lite engine. Writes bench/results/load.json and bench/results/serve_flame.svg."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil

from _load_stats import step_row, tree_rss_mb
from _profile import record, top
from _serve_load import api_server, free_port, md
from _util import RESULTS, ROOT, write

WORK = ROOT / ".millrace" / "bench-load"
COLS = ["users", "qps", "p50_ms", "p95_ms", "p99_ms", "error_rate", "5xx", "429", "other_cpu_cores"]


def listener(url: str) -> int:
    """The pid serving `url` (api_server yields only the URL)."""
    port = urlparse(url).port
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
            return c.pid
    raise RuntimeError(f"nothing listens on {url}")


def replica_home(source: Path, name: str) -> Path:
    """A private copy of the index: replicas must not share one Lite file, nor hold another benchmark's."""
    dest = WORK / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.lock"))
    return dest


def locust(name: str, hosts: list[str], plan: dict, pids: dict, args, mix: dict | None = None,
           keys: list[str] | None = None, scrape_key: str = "") -> dict:
    """One headless Locust run (its own process: gevent stays out of this one); step rows and Locust's CSVs."""
    out, csv = WORK / "runs" / f"{name}.json", WORK / "runs" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    env = dict(os.environ, MILLRACE_LOAD_HOSTS=",".join(hosts), MILLRACE_LOAD_PLAN=json.dumps(plan),
               MILLRACE_LOAD_OUT=str(out), MILLRACE_LOAD_PIDS=json.dumps(pids), MILLRACE_LOAD_MIX=json.dumps(mix or {}),
               MILLRACE_LOAD_QUERIES=str(Path(args.corpus) / "queries.jsonl"), MILLRACE_LOAD_KEYS=",".join(keys or []),
               MILLRACE_LOAD_SCRAPE_KEY=scrape_key,
               MILLRACE_LOAD_MAX_TOKENS=str(args.max_tokens))
    bound = len(plan["users"]) * plan["step_s"] + 30
    cmd = [str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
           "--csv", str(csv), "--only-summary", "--loglevel", "WARNING"]
    print(f"[{name}] {len(hosts)} host(s), users {plan['users']}, {plan['step_s']} s a step", flush=True)
    with open(WORK / "runs" / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT / "bench", env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        proc.wait(bound + 60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if not out.is_file():
        raise RuntimeError(f"Locust wrote no {out}:\n{(WORK / 'runs' / f'{name}.log').read_text()[-3000:]}")
    data = json.loads(out.read_text())
    steps = [step_row(s, data["records"]) | {"verdict": s.get("verdict")} for s in data["steps"]]
    for s in steps:
        print(f"  users {s['users']}: {s['qps']} req/s, p95 {s['p95_ms']} ms, 5xx {s['5xx']}, 429 {s['429']}, "
              f"cores {s['cpu_cores']}, other {s['other_cpu_cores']}", flush=True)
    return {"hosts": len(hosts), "mix": data["mix"], "steps": steps}


def hold(users: int, args) -> dict:
    return {"users": [users], "step_s": args.hold_s, "settle_s": args.settle_s}


@contextmanager
def keyed_warmup(key: str):
    """api_server's readiness check searches without a key, which a keyed server answers with 401: send one."""
    plain = httpx.post, httpx.get
    auth = {"Authorization": f"Bearer {key}"}
    httpx.post = lambda *a, **kw: plain[0](*a, **kw, headers=auth)
    httpx.get = lambda *a, **kw: plain[1](*a, **kw, headers=auth)
    try:
        yield
    finally:
        httpx.post, httpx.get = plain


def start_llm(model_dir: Path, name: str):
    from dev import devllm

    port = free_port()
    proc = devllm.start_vllm(model_dir, port, log_path=WORK / f"{name}.log")
    try:
        devllm.wait_vllm(f"http://127.0.0.1:{port}", proc)
    except BaseException:
        devllm.stop_vllm(proc)
        raise
    return proc, {"llm_url": f"http://127.0.0.1:{port}/v1", "llm_model": devllm.NAME, "llm_extra": {"ignore_eos": True}}


def lite_memory(home: Path, url: str) -> dict:
    """RSS of the API process and of its children (the Lite engine holding the loaded collection), and the file."""
    pid = listener(url)
    kids = [p.pid for p in psutil.Process(pid).children(recursive=True)]
    return {"api_rss_mb": round(psutil.Process(pid).memory_info().rss / 2**20, 1), "lite_rss_mb": tree_rss_mb(kids),
            "db_mb": round(sum(f.stat().st_size for f in home.glob("*.db")) / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--limit", type=int, help="index only the first N documents (default: all 5,183)")
    ap.add_argument("--small-limit", type=int, default=200, help="a second, small index for Lite memory per chunk")
    ap.add_argument("--steps", default="1,2,4,8,16,32,64", help="users per ramp step (bounded: at most 64)")
    ap.add_argument("--step-s", type=int, default=40)
    ap.add_argument("--settle-s", type=int, default=5, help="left out at the start of every step")
    ap.add_argument("--growth", type=float, default=1.1, help="saturated once QPS grows less than this factor")
    ap.add_argument("--p95-ms", type=float, default=10_000, help="saturated once p95 passes this")
    ap.add_argument("--hold-s", type=int, default=45, help="length of each fixed-users run (profile, capacity)")
    ap.add_argument("--profile-s", type=int, default=30)
    ap.add_argument("--rate-limit", type=int, default=0, help="requests a minute per key in the rate-limit phase "
                    "(default: a quarter of the saturation throughput, over the two keys)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--skip-vllm2", action="store_true", help="no second vLLM instance")
    args = ap.parse_args()
    steps = [u for u in map(int, args.steps.split(",")) if u <= 64]
    if len(steps) * args.step_s > 360:
        ap.error("the ramp is bounded to 6 minutes: fewer steps or shorter ones")
    from serve import ensure_index
    from dev import devllm

    started, r = time.perf_counter(), {"args": vars(args)}
    source = ROOT / ".millrace" / "bench-serve" / f"scifact-{args.limit or 'all'}"
    r["index"] = ensure_index(args.corpus, args.limit, source)
    small = ROOT / ".millrace" / "bench-serve" / f"scifact-{args.small_limit}"
    r["small_index"] = ensure_index(args.corpus, args.small_limit, small)
    WORK.mkdir(parents=True, exist_ok=True)
    homes = [replica_home(source, "r1"), replica_home(source, "r2")]
    model = devllm.build_tiny_model(WORK / devllm.NAME)
    no_cache = {"cache": "false", "semantic_cache": "false"}
    cap, vllms = {}, []
    try:
        vllms.append(start_llm(model, "vllm-1"))
        llm1, vpid1 = vllms[0][1], [vllms[0][0].pid]
        with api_server(homes[0], WORK / "api-1.log", **no_cache, **llm1) as url1:
            r["memory"] = {"full": lite_memory(homes[0], url1)}
            pids = {"api": [listener(url1)], "vllm": vpid1}
            plan = {"users": steps, "step_s": args.step_s, "settle_s": args.settle_s, "stop_on_saturation": True,
                    "growth": args.growth, "p95_ms": args.p95_ms}
            r["ramp"] = locust("ramp", [url1], plan, pids, args)
            sat = r["ramp"]["steps"][-1]["users"] if r["ramp"]["steps"] else steps[-1]
            r["saturation_users"] = sat
            # The profile window sits inside a fixed run at the saturating load.
            def profile() -> list[str]:
                time.sleep(args.settle_s + 2)  # users arrived and settled
                return record(pids["api"][0], args.profile_s, RESULTS / "serve_flame.svg", WORK / "serve_profile.raw")

            with ThreadPoolExecutor(1) as pool:
                spy = pool.submit(profile)
                cap["1 api, 1 vllm"] = locust("sat-1api-1vllm", [url1], hold(sat, args), pids, args)
                problems = spy.result()
            r["profile"] = {"svg": "bench/results/serve_flame.svg", "seconds": args.profile_s, "problems": problems,
                            **(top(WORK / "serve_profile.raw") if not problems else {})}
            cap["1 api, search only"] = locust("search-1api", [url1], hold(sat, args), pids, args,
                                               mix={"search": 1, "chat": 0, "chat_stream": 0})
            with api_server(homes[1], WORK / "api-2.log", **no_cache, **llm1) as url2:
                both = {"api": [listener(url1), listener(url2)], "vllm": vpid1}
                cap["2 api, 1 vllm"] = locust("sat-2api-1vllm", [url1, url2], hold(sat, args), both, args)
                cap["2 api, search only"] = locust("search-2api", [url1, url2], hold(sat, args), both, args,
                                                   mix={"search": 1, "chat": 0, "chat_stream": 0})
            free_gib = psutil.virtual_memory().available / 2**30
            if args.skip_vllm2 or free_gib < 8:
                r["vllm2_skipped"] = "--skip-vllm2" if args.skip_vllm2 else f"only {free_gib:.1f} GiB available"
            else:
                vllms.append(start_llm(model, "vllm-2"))
                with api_server(homes[1], WORK / "api-2b.log", **no_cache, **vllms[1][1]) as url2:
                    both = {"api": [listener(url1), listener(url2)], "vllm": vpid1 + [vllms[1][0].pid]}
                    cap["2 api, 2 vllm"] = locust("sat-2api-2vllm", [url1, url2], hold(sat, args), both, args)
            r["memory"]["vllm_rss_mb"] = [tree_rss_mb([p.pid]) for p, _ in vllms]
        keys, scraper = ["bench-key-a", "bench-key-b"], "bench-key-scrape"
        sat_qps = cap["1 api, 1 vllm"]["steps"][0]["qps"] if cap["1 api, 1 vllm"]["steps"] else 1.0
        limit = args.rate_limit or max(1, round(sat_qps * 60 / 4 / len(keys)))
        with contextlib.ExitStack() as stack:
            with keyed_warmup(scraper):
                url = stack.enter_context(api_server(homes[0], WORK / "api-rl.log", **no_cache, **llm1,
                                                     api_keys=",".join(keys + [scraper]),
                                                     rate_limit_per_min=str(limit)))
            rl = locust("rate-limited", [url], hold(sat, args), {"api": [listener(url)], "vllm": vpid1}, args,
                        keys=keys, scrape_key=scraper)
            r["rate_limited"] = {"limit_per_key_per_min": limit, "keys": len(keys), **rl}
    finally:
        for proc, _ in vllms:
            devllm.stop_vllm(proc)
    small_copy = replica_home(small, "small")
    with api_server(small_copy, WORK / "api-small.log", **no_cache) as url:
        r["memory"]["small"] = lite_memory(small_copy, url)
    r["capacity"] = cap
    r["memory"] |= per_million(r)
    r["wall_seconds"] = round(time.perf_counter() - started, 1)
    report(r)
    write("load", r)


def per_million(r: dict) -> dict:
    """Lite's RSS and file size per chunk from the two indexes' difference, scaled to a million chunks."""
    full, small = r["memory"]["full"], r["memory"]["small"]
    d = (r["index"]["chunks"] or 0) - (r["small_index"]["chunks"] or 0)
    if d <= 0:
        return {}
    return {"lite_rss_mb_per_million_chunks": round((full["lite_rss_mb"] - small["lite_rss_mb"]) / d * 1e6),
            "db_mb_per_million_chunks": round((full["db_mb"] - small["db_mb"]) / d * 1e6),
            "raw_vector_mb_per_million": round(384 * 4 * 1e6 / 2**20)}


def report(r: dict) -> None:
    print("\nRamp (one API replica, one vLLM):")
    print(md(r["ramp"]["steps"], COLS + ["cpu_cores"]))
    print("\nPer endpoint and per server stage at each step (ms):")
    rows = []
    for s in r["ramp"]["steps"]:
        for name, e in s["endpoints"].items():
            rows.append({"users": s["users"], "what": name, **e})
        for name, e in s["stages"].items():
            rows.append({"users": s["users"], "what": f"stage {name}", **e})
    print(md(rows, ["users", "what", "n", "qps", "p50_ms", "p95_ms", "p99_ms", "errors", "5xx"]))
    print(f"\nCapacity at {r['saturation_users']} users:")
    print(md([{"setup": k, **v["steps"][0]} for k, v in r["capacity"].items() if v["steps"]],
             ["setup"] + COLS[1:] + ["cpu_cores", "cpu_ms_per_request"]))
    rl = r["rate_limited"]["steps"]
    if rl:
        print(f"\nRate limited ({r['rate_limited']['limit_per_key_per_min']}/min x 2 keys): {rl[0]['requests']} "
              f"requests, {rl[0]['429']} answered 429, 5xx {rl[0]['5xx']}; server statuses {rl[0]['server_status']}")
    if p := r.get("profile", {}).get("by_activity"):
        print(f"\nProfile of the API process at saturation ({r['profile']['samples']} samples, {r['profile']['svg']}):")
        print(md(p, ["activity", "share"]))
        print(md(r["profile"]["self"][:10], ["function", "share"]))
    print(f"\nmemory: {r['memory']}\nwall {r['wall_seconds']} s")


if __name__ == "__main__":
    main()
