"""Answers: retrieve, fit the passages into the model's window, generate through the LLM, keep valid citations.

Both endpoints that generate (/v1/answer and /v1/chat/completions) go through here, streamed or not, so their
passages, citations and caching are one implementation. A generation is opened (its first token received) before any
response starts, so an unreachable or slow LLM is a plain 502/504, not a broken 200 stream."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import numpy as np

from millrace.observe import telemetry
from serving.citations import CitationFilter
from serving.config import ServeSettings
from serving.errors import ServingError
from serving.llm import Delta, LLMClient
from serving.metrics import Metrics, Timer
from serving.prompt import fence_tag, fit
from serving.retrieval import RetrievalService, Snapshot, request_key
from serving.schemas import Answer, Citation, Filter, Passage
from serving.security import fence_key


# Words that never change what a question asks for: differences in them alone do not stop a semantic hit.
_FILLER = frozenset("a an the of to in on at for by with and or do does did is are was were be been it its this that "
                    "these those there".split())


def content_words(text: str) -> list[str]:
    """The question's words, ignoring case, punctuation, order and filler words. A semantic hit needs the same set:
    MiniLM puts a claim and its opposite ("reduces" / "increases") at cosine 0.98-0.995, above any threshold that
    still matches rewordings (bench/serve.py found 4 such wrong answers in 30), so the embedding alone cannot decide."""
    return sorted({w for w in re.findall(r"\w+", text.lower()) if w not in _FILLER})


@dataclass
class Job:
    """One answer to produce: what was retrieved and the prompt, or the cached answer."""

    snap: Snapshot
    timer: Timer
    passages: list[Passage] = field(default_factory=list)  # those the prompt holds, numbered [1..n]
    messages: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    scope: str | None = None
    vector: np.ndarray | None = None
    cached: Answer | None = None


class AnswerService:
    def __init__(self, settings: ServeSettings, retrieval: RetrievalService, llm: LLMClient | None, metrics: Metrics):
        self.settings, self.retrieval, self.llm, self.metrics = settings, retrieval, llm, metrics
        self.fence_key = fence_key(settings) if llm is not None else b""  # search alone never writes the key file

    def require_llm(self) -> LLMClient:
        if self.llm is None:
            raise ServingError(503, "llm_not_configured",
                               "no LLM is configured: set MILLRACE_LLM_URL to an OpenAI-compatible server (`vllm serve "
                               "MODEL`, or `make llm` for a CPU try-out); /v1/search works without one")
        return self.llm

    async def prepare(self, conversation: list[dict[str, Any]], query: str, k: int, mode: str, flt: Filter | None,
                      max_tokens: int, params: dict[str, Any]) -> Job:
        llm = self.require_llm()
        timer = Timer()
        snap = await self.retrieval.snapshot()
        mode = await self.retrieval.mode(snap, mode)
        params = {**params, "max_tokens": max_tokens}
        model = await llm.model()
        job = Job(snap, timer, params=params)
        filt = flt.model_dump(exclude_none=True) if flt else None
        job.key = request_key("answer", model, conversation, k, mode, filt, params)
        if (hit := await self.retrieval.cached(snap, "answer", job.key)) is not None:
            job.cached = self._answer(hit, snap, timer)
            return job
        if mode != "bm25" or self.settings.semantic_cache:
            job.vector = await self.retrieval.embed(snap, query)
        if len(conversation) == 1 and job.vector is not None:  # a lone question: paraphrases may share an answer
            job.scope = request_key("semantic", model, k, mode, filt, params, content_words(query))
            if (hit := await self.retrieval.semantic(snap, job.scope, job.vector)) is not None:
                job.cached = self._answer(hit, snap, timer)
                return job
        found = await self.retrieval.search(snap, query, job.vector, k, mode, flt)
        t0 = time.perf_counter()
        job.messages, job.passages = await fit(conversation, found, max_tokens, llm.count_tokens,
                                               await llm.max_model_len(), tag=fence_tag(self.fence_key, found))
        self.metrics.observe("prompt", time.perf_counter() - t0)
        timer.mark("retrieve")
        return job

    @staticmethod
    def _answer(value: dict, snap: Snapshot, timer: Timer) -> Answer:
        timer.mark("cache")
        return Answer(**{k: v for k, v in value.items() if k != "doc_ids"}, index_version=snap.version,
                      collection=snap.store.collection, cached=True, timings_ms=timer.marks)

    async def open(self, job: Job) -> "Generation":
        """Start generating: returns once the first delta is in (ServingError 502/504 if it never comes)."""
        gen = Generation(self, job)
        await gen.start()
        return gen


class Generation:
    """The deltas of one answer, citations filtered, then the final Answer."""

    def __init__(self, service: AnswerService, job: Job):
        self.service, self.job = service, job
        self.filter = CitationFilter(job.cached.passages if job.cached is not None else job.passages)
        self._stream: AsyncIterator[Delta] | None = None
        self._first: Delta | None = None
        self._span = None
        self.finish_reason: str | None = None
        self.usage: dict[str, int] = {}
        self._t0 = time.perf_counter()

    async def start(self) -> None:
        if self.job.cached is not None:
            return
        self._stream = self.service.require_llm().stream(self.job.messages, self.job.params)
        self._t0 = time.perf_counter()
        # Not the current span: the generation outlives this call (streamed), and ends in deltas() or aclose().
        self._span = telemetry.tracer.start_span("llm.generate", attributes={
            "millrace.passages": len(self.job.passages), "millrace.max_tokens": self.job.params.get("max_tokens", 0)})
        try:
            self._first = await anext(self._stream)
        except StopAsyncIteration:
            self._first = Delta()
        except BaseException as exc:
            self._span.record_exception(exc)
            self._end_span()
            raise
        self._note(self._first)

    def _note(self, delta: Delta) -> None:
        if delta.text and "ttft" not in self.job.timer.marks:
            self.service.metrics.observe("ttft", self.job.timer.mark("ttft"))
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.usage = delta.usage or self.usage

    async def deltas(self) -> AsyncIterator[tuple[str, list[tuple[int, int, int]]]]:
        """(text, marker spans in it) pieces; the spans are offsets in the whole answer."""
        if self.job.cached is not None:  # replayed through the filter: the same spans as when it was generated
            for text, spans in (self.filter.feed(self.job.cached.answer), self.filter.close()):
                if text:
                    yield text, spans
            return
        try:
            pending = [self._first] if self._first else []
            while True:
                delta = pending.pop() if pending else await anext(self._stream)
                self._note(delta)
                if delta.text:
                    text, spans = self.filter.feed(delta.text)
                    if text:
                        yield text, spans
        except StopAsyncIteration:
            pass
        except ServingError as exc:
            self.service.metrics.errors.labels(exc.kind).inc()
            raise
        text, spans = self.filter.close()
        if text:
            yield text, spans
        self.service.metrics.observe("generate", time.perf_counter() - self._t0)
        self._end_span()
        await self._remember()

    def citations(self) -> list[Citation]:
        return self.job.cached.citations if self.job.cached is not None else self.filter.citations()

    def answer(self) -> Answer:
        job = self.job
        if job.cached is not None:
            return job.cached
        job.timer.mark("total")
        return Answer(answer=self.filter.text, citations=self.filter.citations(), passages=job.passages,
                      finish_reason=self.finish_reason, usage=self.usage, index_version=job.snap.version,
                      collection=job.snap.store.collection, timings_ms=job.timer.marks)

    async def _remember(self) -> None:
        if self.finish_reason not in ("stop", "length"):
            return  # an answer cut by an error is never reused
        a = self.answer()
        value = {"answer": a.answer, "citations": [c.model_dump() for c in a.citations],
                 "passages": [p.model_dump() for p in a.passages], "finish_reason": a.finish_reason,
                 "usage": a.usage, "doc_ids": sorted({p.doc_id for p in a.passages})}
        await self.service.retrieval.remember(self.job.snap, self.job.key, value)
        if self.job.scope is not None and self.job.vector is not None:
            await self.service.retrieval.remember_semantic(self.job.snap, self.job.scope, self.job.vector, value)

    async def finish(self) -> Answer:
        """The whole answer (the non-streamed form): the same deltas, collected."""
        try:
            async for _ in self.deltas():
                pass
        finally:
            await self.aclose()
        return self.answer()

    def _end_span(self) -> None:
        if self._span is not None:
            self._span.set_attributes({"millrace.finish_reason": self.finish_reason or "",
                                       "millrace.completion_tokens": self.usage.get("completion_tokens", 0)})
            self._span.end()
            self._span = None

    async def aclose(self) -> None:
        self._end_span()  # a client that went away mid-answer: the span ends with what was generated
        if self._stream is not None:
            await self._stream.aclose()
