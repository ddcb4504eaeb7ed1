"""The answer phases of bench/serve.py: exact- and semantic-cache hits of /v1/answer (with a control of other claims,
where a hit is a wrong answer), and time to first token against the same vLLM server called directly."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import statistics
import time

import httpx

from _serve_load import median, stats

# vLLM's CPU engine core spins one core for ~1 s after each generation; on 2 cores that slows the API's torch
# embedding ~20x (18 ms -> 350-480 ms, measured here). Requests measured after a generation wait this long first.
SETTLE_S = 1.2
PARAPHRASES = {"upper case": str.upper, "punctuation": lambda q: re.sub(r"[.?!]+$", "", q) + " ?",
               "word swap": lambda q: " ".join((w := q.split())[:len(w) // 2 - 1] + w[len(w) // 2:len(w) // 2 + 1]
                                               + w[len(w) // 2 - 1:len(w) // 2] + w[len(w) // 2 + 1:])}


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
