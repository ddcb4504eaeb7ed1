"""The API's routes: thin translations between HTTP (JSON, Server-Sent Events, OpenAI's chunks) and the services."""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from serving import watermark
from serving.errors import ServingError
from serving.retrieval import request_key
from serving.schemas import (AnswerRequest, ChatCompletionRequest, Passage, SearchRequest, SearchResponse,
                             completion_id, now)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not buffer a stream


def services(request: Request):
    return request.app.state.services


async def authorized(request: Request) -> str:
    """401 without a valid key (when keys are configured), 429 past the rate limit."""
    svc = services(request)
    who = svc.keys.check(request.headers.get("authorization")) if svc.keys.enabled else (
        request.client.host if request.client else "anonymous")
    await svc.limiter.acheck(who)
    return who


async def probed(request: Request) -> None:
    """/ready: an API key when keys are set (its checks name the backends), or the scrape token. Never rate limited:
    probes poll, and must neither spend a user's quota nor be refused for it."""
    svc = services(request)
    given = request.headers.get("authorization")
    if svc.keys.enabled and not svc.scrapers.accepts(given):
        svc.keys.check(given)


async def scraped(request: Request) -> None:
    """/metrics: the scrape token when MILLRACE_METRICS_TOKEN is set, else open (Prometheus' convention; vLLM's
    /metrics stays open under --api-key too). Never rate limited: a scrape is not a user's request."""
    svc = services(request)
    if svc.scrapers.enabled:
        svc.scrapers.check(request.headers.get("authorization"))


router = APIRouter(dependencies=[Depends(authorized)])


def capped_k(svc, k: int | None, default: int) -> int:
    k = k or default
    if k > svc.settings.top_k_cap:
        raise ServingError(422, "invalid_request", f"k {k} is above the cap of {svc.settings.top_k_cap} "
                                                   "(MILLRACE_TOP_K_CAP)")
    return k


def capped_max_tokens(svc, requested: int | None) -> int:
    n = requested or svc.settings.max_tokens
    if n > svc.settings.max_tokens_cap:
        raise ServingError(422, "invalid_request", f"max_tokens {n} is above the cap of "
                                                   f"{svc.settings.max_tokens_cap} (MILLRACE_MAX_TOKENS_CAP)")
    return n


@router.post("/v1/search", response_model=SearchResponse)
async def search(body: SearchRequest, request: Request) -> SearchResponse:
    svc = services(request)
    t0 = time.perf_counter()
    k = capped_k(svc, body.k, 10)
    mark = await watermark.current(svc.settings)  # read before searching, so it never claims more than was seen
    r = svc.retrieval
    snap = await r.snapshot()
    mode = await r.mode(snap, body.mode)
    key = request_key("search", body.query, k, mode, body.filter.model_dump(exclude_none=True) if body.filter else None)
    if (hit := await r.cached(snap, "search", key)) is not None:
        return SearchResponse(query=body.query, mode=mode, hits=[Passage(**h) for h in hit["hits"]],
                              index_version=snap.version, collection=snap.store.collection, cached=True,
                              timings_ms={"total": round((time.perf_counter() - t0) * 1000, 3)},
                              watermark=mark)
    vector = None if mode == "bm25" else await r.embed(snap, body.query)
    t1 = time.perf_counter()
    hits = await r.search(snap, body.query, vector, k, mode, body.filter)
    t2 = time.perf_counter()
    if svc.settings.cache:  # the entry is built only where it is kept
        await r.remember(snap, key, {"hits": [h.model_dump() for h in hits],
                                     "doc_ids": sorted({h.doc_id for h in hits})})
    return SearchResponse(query=body.query, mode=mode, hits=hits, index_version=snap.version,
                          collection=snap.store.collection,
                          timings_ms={"embed": round((t1 - t0) * 1000, 3), "search": round((t2 - t1) * 1000, 3),
                                      "total": round((time.perf_counter() - t0) * 1000, 3)},
                          watermark=mark)


def _sse(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


@router.post("/v1/answer")
async def answer(body: AnswerRequest, request: Request):
    svc = services(request)
    k, max_tokens = capped_k(svc, body.k, svc.settings.answer_k), capped_max_tokens(svc, body.max_tokens)
    temperature = svc.settings.llm_temperature if body.temperature is None else body.temperature
    mark = await watermark.current(svc.settings)
    job = await svc.answers.prepare([{"role": "user", "content": body.query}], body.query, k, body.mode, body.filter,
                                    max_tokens, {"temperature": temperature})
    gen = await svc.answers.open(job)
    if not body.stream:
        return with_watermark(await gen.finish(), mark)

    async def events() -> AsyncIterator[str]:
        try:
            passages = [p.model_dump() for p in (job.cached.passages if job.cached else job.passages)]
            yield _sse({"passages": passages, "index_version": job.snap.version,
                        "collection": job.snap.store.collection}, "retrieval")
            async for text, _ in gen.deltas():
                yield _sse({"delta": text}, "token")
            final = with_watermark(gen.answer(), mark)
            yield _sse(final.model_dump(mode="json", exclude={"passages"}), "done")
        except ServingError as exc:
            yield _sse(exc.body(), "error")
        finally:
            await gen.aclose()
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


# --- OpenAI-compatible ---------------------------------------------------------------------------------------------

def _conversation(body: ChatCompletionRequest) -> tuple[list[dict[str, Any]], str]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
                if m.role in ("system", "developer", "user", "assistant")]
    query = next((m["content"] for m in reversed(messages) if m["role"] == "user" and m["content"].strip()), "")
    if not query:
        raise ServingError(422, "invalid_request", "messages hold no user message with text to answer")
    return messages, query


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    svc = services(request)
    if len(body.messages) > svc.settings.max_messages:
        raise ServingError(422, "invalid_request", f"{len(body.messages)} messages are more than the cap of "
                                                   f"{svc.settings.max_messages} (MILLRACE_MAX_MESSAGES)")
    model = await svc.answers.require_llm().model()
    if body.model and body.model not in (model, "millrace"):
        raise ServingError(404, "model_not_found", f"model {body.model!r} is not served here; GET /v1/models lists "
                                                   f"{model!r}")
    conversation, query = _conversation(body)
    opts = body.millrace
    k = capped_k(svc, opts.k if opts else None, svc.settings.answer_k)
    max_tokens = capped_max_tokens(svc, body.max_completion_tokens or body.max_tokens)
    params = {"temperature": svc.settings.llm_temperature if body.temperature is None else body.temperature}
    for name in ("top_p", "seed", "stop", "logit_bias"):
        if getattr(body, name) is not None:
            params[name] = getattr(body, name)
    mark = await watermark.current(svc.settings)
    job = await svc.answers.prepare(conversation, query, k, opts.mode if opts else "auto",
                                    opts.filter if opts else None, max_tokens, params)
    gen = await svc.answers.open(job)
    cid, created, name = completion_id(), now(), body.model or model
    if not body.stream:
        a = with_watermark(await gen.finish(), mark)
        return {"id": cid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "finish_reason": a.finish_reason or "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": a.answer, "refusal": None,
                                         "annotations": gen.filter.annotations()}}],
                "usage": _usage(a.usage), "citations": [c.model_dump() for c in a.citations],
                "millrace": millrace_extra(a)}

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra})

    async def events() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for text, _ in gen.deltas():
                yield chunk({"content": text})
            a = with_watermark(gen.answer(), mark)
            # The annotations go once, whole, in the last delta: the SDKs' stream helpers accumulate a list delta
            # differently (openai-python merges entries by an `index` key and concatenates the strings of a repeated
            # one; openai-node replaces the list), and a single complete list is what both end up with intact.
            yield chunk({"annotations": gen.filter.annotations()}, a.finish_reason or "stop",
                        citations=[c.model_dump() for c in a.citations], millrace=millrace_extra(a))
            if body.stream_options and body.stream_options.include_usage:
                yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                            "choices": [], "usage": _usage(a.usage)})
        except ServingError as exc:
            yield _sse(exc.body())  # the openai client raises APIError on an `error` event
        finally:
            await gen.aclose()
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _usage(usage: dict[str, int]) -> dict[str, int]:
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def with_watermark(a, mark):
    """The answer, carrying the index watermark read when its request was answered."""
    a.watermark = mark
    return a


def millrace_extra(a) -> dict[str, Any]:
    return {"index_version": a.index_version, "collection": a.collection, "cached": a.cached,
            "timings_ms": a.timings_ms, "passages": [p.model_dump() for p in a.passages],
            "watermark": a.watermark.model_dump(mode="json") if a.watermark is not None else None}


@router.get("/v1/models")
async def models(request: Request):
    svc = services(request)
    llm = svc.answers.require_llm()
    name, window = await llm.model(), await llm.max_model_len()
    return {"object": "list", "data": [{"id": name, "object": "model", "created": svc.started, "owned_by": "millrace",
                                        "max_model_len": window, "root": name},
                                       {"id": "millrace", "object": "model", "created": svc.started,
                                        "owned_by": "millrace", "max_model_len": window, "root": name}]}
