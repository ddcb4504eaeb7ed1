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
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serve_answers import PARAPHRASES, cache_phase, ttft_phase
from _serve_load import COLL, COLS, api_server, cpu_now, free_port, load, md, other_cores, raw_load, stages
from _util import ROOT, write

METHOD = ("API: `python -m serving.server` in its own process on loopback; clients httpx.AsyncClient, HTTP/1.1 "
          "keep-alive, c requests in flight. Raw Milvus: pymilvus MilvusClient.search / hybrid_search of precomputed "
          "query vectors from c threads, on the same Lite file after the API servers exited (Lite admits one opener). "
          "Search series with MILLRACE_CACHE=false and every query text new to the server. Everything (client, API, "
          "Milvus Lite, vLLM) shares the same 2 CPU cores; other_cpu_cores = CPU used by processes not ours.")


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


def raw_phase(home: Path, series: dict, k: int, max_s: float, questions: list[str]) -> dict:
    """Raw pymilvus on the Lite file: dense `search`, and the `hybrid_search` Millrace sends (RRF of dense and BM25
    candidates). At c=1 also parts of the API's path alone: Millrace's store layer, and embedding one query."""
    import pymilvus as mp

    from millrace import clients
    from millrace.index import versions
    from millrace.config import load_settings
    from millrace.documents.embed import Embedder
    from millrace.index.connect import _SEARCH
    from millrace.index.schema import OUTPUT_FIELDS, SPARSE_FIELD
    from millrace.index.searching import HYBRID_CANDIDATES, RRF_K

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
            from dev import devllm

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
