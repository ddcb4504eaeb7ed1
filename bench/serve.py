"""Serving latency of the API (`millrace serve`) on BEIR SciFact, side by side in one run: /v1/search p50/p99/QPS at
concurrency 1, 8, 32 (dense, hybrid) against raw pymilvus search of precomputed vectors at the same concurrency;
exact- and semantic-cache hit latency of /v1/answer; /v1/answer time to first token against vLLM called directly.

    python bench/serve.py                          # full SciFact (5,183 docs), levels 1,8,32, tiny vLLM (CPU)
    python bench/serve.py --limit 500 --skip-llm   # a quick run: search and the search cache only

The API runs as `python -m serving.server` in its own process (client and server share no GIL) on Milvus Lite 2.5
(FLAT and BM25, so hybrid works; the 2.3 standalone server has no BM25). Lite admits one opener per file, so the raw
baseline opens the same file in this process after the API servers have exited: same data and engine, one after the
other. Every search text is new to the server (SciFact's queries, then ' (variant r)' copies), so neither the exact
cache (off for the latency series) nor serving.batcher's embedding memo hides work."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from _util import ROOT, write

COLL, COLS = "scifact", ("n", "p50_ms", "p99_ms", "qps", "other_cpu_cores")
# vLLM's CPU engine core spins one core for ~1 s after each generation; on 2 cores that slows the API's torch
# embedding ~20x (18 ms -> 350-480 ms, measured here). Requests measured after a generation wait this long first.
SETTLE_S = 1.2
PARAPHRASES = {"upper case": str.upper, "punctuation": lambda q: re.sub(r"[.?!]+$", "", q) + " ?",
               "word swap": lambda q: " ".join((w := q.split())[:len(w) // 2 - 1] + w[len(w) // 2:len(w) // 2 + 1]
                                               + w[len(w) // 2 - 1:len(w) // 2] + w[len(w) // 2 + 1:])}
METHOD = ("API: `python -m serving.server` in its own process on loopback; clients httpx.AsyncClient, HTTP/1.1 "
          "keep-alive, c requests in flight. Raw Milvus: pymilvus MilvusClient.search / hybrid_search of precomputed "
          "query vectors from c threads, on the same Lite file after the API servers exited (Lite admits one opener). "
          "Search series with MILLRACE_CACHE=false and every query text new to the server. Everything (client, API, "
          "Milvus Lite, vLLM) shares the same 2 CPU cores; other_cpu_cores = CPU used by processes not ours.")


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


def ensure_index(corpus: str, limit: int | None, home: Path) -> dict:
    """Reuse the index in `home`, else ingest the corpus into it with `millrace ingest` in a child process (Lite's
    one opener must be the API server, not this process)."""
    from millrace.benchmark import take

    if (done := home / "bench-serve-ingest.json").is_file():
        print(f"reusing the index in {home}", flush=True)
        return json.loads(done.read_text())
    home.mkdir(parents=True, exist_ok=True)
    source, t = take(corpus, limit, home), time.perf_counter()
    print(f"ingesting {source} into {home} (millrace ingest) ...", flush=True)
    out = subprocess.run([str(Path(sys.executable).parent / "millrace"), "ingest", str(source), "--collection", COLL,
                          "--home", str(home), "--json"], cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    info = {"documents": summary.get("indexed"), "chunks": summary.get("chunks_written"),
            "ingest_seconds": round(time.perf_counter() - t, 1), "limit": limit}
    done.write_text(json.dumps(info))
    return info


@contextmanager
def api_server(home: Path, log: Path, **env):
    """`python -m serving.server` on a free loopback port, MILLRACE_* from `env`; yields its URL once /ready is 200."""
    port = free_port()
    full = dict(os.environ, MILLRACE_HOME=str(home), MILLRACE_COLLECTION=COLL,
                **{f"MILLRACE_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in env.items()})
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not get ready:\n{log.read_text()[-3000:]}")
            try:  # /ready is 503 on a Lite collection nobody searched yet (NotLoad): one search loads it
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


def raw_phase(home: Path, series: dict, k: int, max_s: float, questions: list[str]) -> dict:
    """Raw pymilvus on the Lite file: dense `search`, and the `hybrid_search` Millrace sends (RRF of dense and BM25
    candidates). At c=1 also parts of the API's path alone: Millrace's store layer, and embedding one query."""
    import pymilvus as mp

    from millrace import clients, versions
    from millrace.config import load_settings
    from millrace.embed import Embedder
    from millrace.store import _SEARCH, HYBRID_CANDIDATES, OUTPUT_FIELDS, RRF_K, SPARSE_FIELD

    settings = load_settings(home=str(home), collection=COLL)
    store = clients.milvus_store(settings, versions.active_physical(settings))
    client, coll, level = store.client, store.collection, {"consistency_level": settings.search_consistency}
    dense = {"metric_type": settings.milvus_metric, "params": _SEARCH.get(store.index_type, {})}
    embedder, fetch = Embedder(settings), max(2 * k, HYBRID_CANDIDATES)

    def raw(mode):
        def one(item):
            text, vec = item
            if mode == "dense":
                return client.search(coll, data=[vec], anns_field="vector", limit=k, output_fields=OUTPUT_FIELDS,
                                     search_params=dense, **level)
            reqs = [mp.AnnSearchRequest(data=[vec], anns_field="vector", param=dense, limit=fetch),
                    mp.AnnSearchRequest(data=[text], anns_field=SPARSE_FIELD, param={"metric_type": "BM25"},
                                        limit=fetch)]
            return client.hybrid_search(coll, reqs=reqs, ranker=mp.RRFRanker(RRF_K), limit=fetch,
                                        output_fields=OUTPUT_FIELDS, **level)[0][:k]
        return one

    out, parts = {}, {}
    for (mode, conc), texts in series.items():
        items = list(zip(texts, [v.tolist() for v in embedder.encode(texts)]))
        out[f"{mode}@{conc}"] = raw_load(raw(mode), items, conc, max_s)
        print(f"raw {mode} c={conc}: {out[f'{mode}@{conc}']}", flush=True)
        if conc == 1:
            parts[f"MilvusStore.search {mode}"] = raw_load(lambda it: store.search(it[1], k, text=it[0], mode=mode),
                                                           items, 1, max_s)
            parts[f"embed one query ({mode} texts)"] = raw_load(lambda it: embedder.encode([it[0]]), items, 1, max_s)
    sims = {kind: round(float((embedder.encode(questions) * embedder.encode([f(q) for q in questions])).sum(1)
                              .mean()), 4) for kind, f in PARAPHRASES.items()} if questions else {}
    clients.forget(settings)
    return {"search": out, "parts_c1": parts, "paraphrase_mean_cosine": sims, "index_type": store.index_type}


async def cache_phase(url: str, queries: list[str], n: int, max_tokens: int, skip_llm: bool) -> dict:
    """Search exact-cache hits; with the LLM: answers warmed, then asked again (exact) and paraphrased (semantic),
    and the next n SciFact claims as a control (a hit there answers another claim). Sequential requests."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        async def ask(path: str, body: dict) -> tuple[float, dict]:
            t = time.perf_counter()
            r = await c.post(path, json=body)
            return time.perf_counter() - t, r.raise_for_status().json()

        def summary(results: list[tuple[float, dict]], stage: str) -> dict:
            hits = [(dt, j) for dt, j in results if j.get("cached")]
            return {"requests": len(results), "hit_rate": round(len(hits) / max(1, len(results)), 3),
                    "hits": stats([dt for dt, _ in hits]),
                    "server_p50_ms": median(j.get("timings_ms", {}).get(stage) for _, j in hits)}

        searches = [{"query": q, "k": 10, "mode": "dense"} for q in queries[:n]]
        for b in searches:
            await ask("/v1/search", b)
        out = {"search exact": summary([await ask("/v1/search", b) for b in searches], "total")}
        if skip_llm:
            return out
        async def answer(q: str) -> tuple[float, dict]:
            dt, j = await ask("/v1/answer", {"query": q, "max_tokens": max_tokens})
            if not j.get("cached"):
                await asyncio.sleep(SETTLE_S)  # generated: let vLLM's engine go idle before the next one
            return dt, j

        out["answer miss (generated)"] = {"requests": n, "all": stats([(await answer(q))[0] for q in queries[:n]])}
        out["answer exact"] = summary([await answer(q) for q in queries[:n]], "cache")
        for kind, f in PARAPHRASES.items():
            out[f"answer semantic: {kind}"] = summary([await answer(f(q)) for q in queries[:n]], "cache")
        out["answer control: other claims (a hit is a wrong answer)"] = summary(
            [await answer(q) for q in queries[n:2 * n]], "cache")
        return out


async def ttft_phase(url: str, llm: str, model: str, extra: dict, texts: list[str], max_tokens: int) -> dict:
    """Sequential streamed answers: Millrace's /v1/answer, then vLLM's /v1/chat/completions with the messages Millrace
    built (its system prompt and the passages it kept, a fresh fence tag); TTFT = first non-empty text, client-side.
    Each request starts with vLLM idle (SETTLE_S after the previous generation)."""
    from serving.prompt import build_messages
    from serving.schemas import Passage

    mill, direct, retrieve, kept, tokenize = [], [], [], [], []
    async with httpx.AsyncClient(timeout=300) as c:
        for q in texts:
            await asyncio.sleep(SETTLE_S)
            t, first, event, passages = time.perf_counter(), None, None, []
            async with c.stream("POST", url + "/v1/answer", json={"query": q, "max_tokens": max_tokens,
                                                                 "stream": True}) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        event = line[6:].strip() if line.startswith("event:") else None
                    elif event == "token" and first is None:
                        first = time.perf_counter() - t
                    elif event == "retrieval":
                        passages = [Passage(**p) for p in json.loads(line[5:])["passages"]]
                    elif event == "done":
                        retrieve.append(json.loads(line[5:])["timings_ms"].get("retrieve"))
            mill.append(first)
            kept.append(len(passages))
            messages = build_messages([{"role": "user", "content": q}], passages, secrets.token_hex(6))
            await asyncio.sleep(SETTLE_S)
            t, first = time.perf_counter(), None
            async with c.stream("POST", llm + "/v1/chat/completions", json={
                    "model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
                    "max_tokens": max_tokens, "temperature": 0.0, **extra}) as r:
                async for line in r.aiter_lines():
                    data = line[5:].strip() if line.startswith("data:") else "[DONE]"
                    if first is None and data != "[DONE]" and any(
                            (ch.get("delta") or {}).get("content") for ch in json.loads(data).get("choices") or []):
                        first = time.perf_counter() - t
            direct.append(first)
            t = time.perf_counter()  # one count of the final prompt, as serving.llm.count_tokens asks it
            (await c.post(llm + "/tokenize", json={"model": model, "messages": messages})).raise_for_status()
            tokenize.append(time.perf_counter() - t)
    m, d = stats([x for x in mill if x], q=(50, 95)), stats([x for x in direct if x], q=(50, 95))
    return {"millrace": m, "vllm_direct": d, "overhead_p50_ms": round(m["p50_ms"] - d["p50_ms"], 2),
            "millrace_retrieve_p50_ms": median(retrieve), "passages_kept_mean": round(statistics.fmean(kept), 2),
            "one_tokenize_call": stats(tokenize, q=(50, 95))}


def md(rows: list[dict], cols: list[str]) -> str:
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--limit", type=int, help="ingest only the first N documents")
    ap.add_argument("--home", type=Path, help="a Millrace home holding the index (default .millrace/bench-serve/...)")
    ap.add_argument("--requests", type=int, default=300, help="requests per concurrency level and mode")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--max-seconds", type=float, default=90, help="time bound of one level")
    ap.add_argument("--cache-questions", type=int, default=30)
    ap.add_argument("--ttft-requests", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--skip-llm", action="store_true", help="no vLLM: search and the search cache only")
    args = ap.parse_args()
    levels, k, started = [int(x) for x in args.levels.split(",")], 10, time.perf_counter()
    home = (args.home or ROOT / ".millrace" / "bench-serve" / f"scifact-{args.limit or 'all'}").resolve()
    r = {"index": ensure_index(args.corpus, args.limit, home), "home": str(home), "k": k, "levels": levels,
         "requests_per_level": args.requests, "max_tokens": args.max_tokens, "method": METHOD}
    queries = [json.loads(line)["text"] for line in (Path(args.corpus) / "queries.jsonl").open() if line.strip()]
    fresh = (queries[i % len(queries)] + (f" (variant {i // len(queries)})" if i >= len(queries) else "")
             for i in itertools.count())
    series, api = {}, {}
    with tempfile.TemporaryDirectory(prefix="millrace-serve-bench-") as tmp:
        tmp, vllm, llm_env, extra = Path(tmp), None, {}, {"ignore_eos": True}  # every answer is max_tokens long
        if not args.skip_llm:
            from serving import devllm

            model_dir, port = devllm.build_tiny_model(tmp / devllm.NAME), free_port()
            vllm = devllm.start_vllm(model_dir, port, log_path=tmp / "vllm.log")
            devllm.wait_vllm(f"http://127.0.0.1:{port}", vllm)
            llm_env = {"llm_url": f"http://127.0.0.1:{port}/v1", "llm_model": devllm.NAME, "llm_extra": extra}
        try:
            with api_server(home, tmp / "api-a.log", cache="false", semantic_cache="false", **llm_env) as url:
                for mode, conc in itertools.product(("dense", "hybrid"), levels):
                    series[(mode, conc)], before = list(itertools.islice(fresh, args.requests + conc)), stages(url)
                    api[f"{mode}@{conc}"] = asyncio.run(load(url, "/v1/search", [
                        {"query": t, "k": k, "mode": mode} for t in series[(mode, conc)]], conc, args.max_seconds))
                    api[f"{mode}@{conc}"]["server_stage_mean"] = stages(url, before)
                    print(f"api {mode} c={conc}: {api[f'{mode}@{conc}']}", flush=True)
                if vllm is not None:
                    before, start = stages(url), cpu_now()
                    r["ttft"] = asyncio.run(ttft_phase(url, llm_env["llm_url"][:-3], devllm.NAME, extra, list(
                        itertools.islice(fresh, args.ttft_requests)), args.max_tokens))
                    r["ttft"] |= {"server_stage_mean": stages(url, before), "other_cpu_cores": other_cores(start)}
            with api_server(home, tmp / "api-b.log", cache="true", semantic_cache="true", **llm_env) as url:
                start = cpu_now()
                r["cache"] = asyncio.run(cache_phase(url, queries, args.cache_questions, args.max_tokens,
                                                     args.skip_llm))
                r["cache_other_cpu_cores"] = other_cores(start)
        finally:
            if vllm is not None:
                devllm.stop_vllm(vllm)
    raw = raw_phase(home, series, k, args.max_seconds, [] if args.skip_llm else queries[:args.cache_questions])
    r |= {"api_search": api, "raw_search": raw.pop("search"), **raw}
    r["overhead_p50_ms_at_c1"] = {m: round(api[f"{m}@1"]["p50_ms"] - r["raw_search"][f"{m}@1"]["p50_ms"], 2)
                                  for m in ("dense", "hybrid") if 1 in levels}
    r["wall_seconds"] = round(time.perf_counter() - started, 1)
    report(r, levels)
    write("serve", r)


def report(r: dict, levels: list[int]) -> None:
    cols = ["path", "mode", "c", *COLS, "server_total_p50_ms", "server mean ms version/embed/search, batch"]
    print("\n" + md([{"path": p, "mode": m, "c": c, **src[f"{m}@{c}"], cols[-1]: "/".join(
        str(src[f"{m}@{c}"].get("server_stage_mean", {}).get(x, "-")) for x in ("index_version", "embed", "search",
                                                                                 "embed_batch"))}
        for m in ("dense", "hybrid") for c in levels for p, src in (("API", r["api_search"]),
                                                                   ("raw Milvus", r["raw_search"]))], cols))
    print(f"\noverhead p50(API) - p50(raw Milvus) at c=1 (ms): {r['overhead_p50_ms_at_c1']}; parts alone at c=1:")
    print(md([{"part": name, **v} for name, v in r["parts_c1"].items()], ["part", *COLS]))
    print("\n" + md([{"cache": name, "requests": v["requests"], "hit rate": v.get("hit_rate", "-"),
                      **v.get("hits", v.get("all", {})), "server p50 ms": v.get("server_p50_ms", "-")}
                     for name, v in r["cache"].items()], ["cache", "requests", "hit rate", "p50_ms", "p99_ms",
                                                          "server p50 ms"]))
    if r["paraphrase_mean_cosine"]:
        print(f"mean cosine of question and paraphrase: {r['paraphrase_mean_cosine']} (threshold 0.95)")
    if t := r.get("ttft"):
        print("\n" + md([{"TTFT": p, **t[key]} for p, key in (("Millrace /v1/answer", "millrace"), ("vLLM direct",
                         "vllm_direct"), ("one vLLM /tokenize call", "one_tokenize_call"))],
                        ["TTFT", "n", "p50_ms", "p95_ms", "mean_ms"]))
        print(f"TTFT overhead p50: {t['overhead_p50_ms']} ms; Millrace retrieve (until the prompt is ready) p50 "
              f"{t['millrace_retrieve_p50_ms']} ms; server stage means (ms) {t['server_stage_mean']}; passages kept "
              f"{t['passages_kept_mean']} of 5; other_cpu_cores {t['other_cpu_cores']}")
    print(f"\n{r['method']}\nwall {r['wall_seconds']} s")


if __name__ == "__main__":
    main()
