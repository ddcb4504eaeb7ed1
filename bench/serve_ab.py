"""Two checkouts' API side by side in one run, on one index: which serves /v1/search faster, and with how much CPU.

    git worktree add /tmp/base <rev>
    python bench/serve_ab.py --base /tmp/base            # this checkout against <rev>, 5 rounds

Serving figures move by a millisecond or more between identical runs on a shared 2-core machine, so comparing one
run of each revision measures the machine as much as the code. Here the two servers take turns, round after round,
on the same Lite file (it admits one opener, so one server at a time), and the medians over the rounds are compared.
Each round measures, per server: the p50 of sequential /v1/search requests whose text is new to the server (cache
off, as bench/serve.py's c=1 series); and the p50 of exact search-cache hits with the server's CPU per hit (a hit is
all framework: HTTP, validation, middleware, the cache and the served-documents check). The other checkout uses this
checkout's Python environment: only the code differs."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
import psutil

from _serve_load import COLL, api_server
from _util import ROOT, write
from serve import ensure_index


async def sequential(url: str, bodies: list[dict], warm: int = 20) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        out = []
        for i, body in enumerate(bodies):
            t = time.perf_counter()
            (await c.post("/v1/search", json=body)).raise_for_status().json()
            if i >= warm:
                out.append(time.perf_counter() - t)
        return out


def server_cpu(url: str) -> psutil.Process:
    port = int(url.rsplit(":", 1)[1])
    for p in psutil.process_iter(["cmdline"]):
        if "serving.server" in " ".join(p.info["cmdline"] or []) and str(port) in p.info["cmdline"]:
            return p
    raise RuntimeError(f"no API server process on port {port}")


def one_round(root: Path, home: Path, log: Path, queries: list[str], r: int, hits: int) -> dict:
    with api_server(home, log, root=root, cache="false") as url:
        misses = asyncio.run(sequential(url, [{"query": f"{q} (ab {r})", "k": 10, "mode": "dense"} for q in queries]))
    with api_server(home, log, root=root, cache="true") as url:
        proc, body = server_cpu(url), {"query": queries[0], "k": 10, "mode": "dense"}
        asyncio.run(sequential(url, [body] * 50, warm=50))
        before = sum(proc.cpu_times()[:2])
        hit = asyncio.run(sequential(url, [body] * hits, warm=0))
        cpu = sum(proc.cpu_times()[:2]) - before
    return {"search_p50_ms": statistics.median(misses) * 1000, "hit_p50_ms": statistics.median(hit) * 1000,
            "hit_server_cpu_ms": cpu / hits * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--home", type=Path, help="a Millrace home holding the index (default: bench/serve.py's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=250)
    ap.add_argument("--hits", type=int, default=1000)
    args = ap.parse_args()
    home = args.home or ROOT / ".millrace" / "bench-serve" / "scifact-all"
    ensure_index(args.corpus, None, home)
    queries = [json.loads(line)["text"] for line in open(Path(args.corpus) / "queries.jsonl")][:args.requests]
    sides = {"base": args.base.resolve(), "this": ROOT}
    rounds: dict[str, list[dict]] = {k: [] for k in sides}
    log = home.parent / "serve_ab.log"
    for r in range(args.rounds):
        for name, root in sides.items():
            rounds[name].append(one_round(root, home, log, queries, r, args.hits))
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in rounds[name][-1].items()),
                  flush=True)
    medians = {name: {k: round(statistics.median(x[k] for x in rs), 2) for k in rs[0]} for name, rs in rounds.items()}
    for name, m in medians.items():
        print(f"median over {args.rounds} rounds, {name} ({sides[name]}): {m}")
    write("serve_ab", {"collection": COLL, "sides": {k: str(v) for k, v in sides.items()}, "rounds": rounds,
                       "medians": medians})


if __name__ == "__main__":
    main()
