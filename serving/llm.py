"""Generation through an OpenAI-compatible server (vLLM): async, one pooled connection set, streamed.

Upstream is always asked to stream, for whole answers too, so both forms of an answer come from the same kind of
generation and the time to first token is measured for both. Retries (explicit delays with jitter, I/O errors only)
happen only before the first token: once text has reached the client, a retry would repeat it. Errors come out as
ServingError: 502 unreachable or failing, 504 too slow, 400 for a request the LLM refused."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import httpx

from millrace.retry import backoff, is_transient
from serving.config import ServeSettings
from serving.errors import ServingError


@dataclass
class Delta:
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


class LLMClient:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.base = settings.llm_base
        key = settings.llm_api_key.get_secret_value()
        timeout = httpx.Timeout(connect=settings.llm_connect_timeout_s, read=settings.llm_read_timeout_s,
                                write=settings.llm_read_timeout_s, pool=settings.llm_connect_timeout_s)
        self.http = httpx.AsyncClient(base_url=self.base, timeout=timeout,
                                      headers={"Authorization": f"Bearer {key}"} if key else {},
                                      limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self._model: str | None = settings.llm_model or None
        self._max_len: int | None = None
        self._tokenize = True  # until the server shows it has no /tokenize (not vLLM): then estimate, without asking

    async def close(self) -> None:
        await self.http.aclose()

    def _unreachable(self, exc: BaseException) -> ServingError:
        return ServingError(502, "llm_unreachable",
                            f"the LLM at {self.base} is unreachable ({type(exc).__name__}: {exc}); start it (vLLM: "
                            "`vllm serve MODEL`, or `make llm` for the CPU build) or fix MILLRACE_LLM_URL")

    async def _get_models(self) -> list[dict[str, Any]]:
        try:
            r = await self.http.get("/v1/models")
        except httpx.TimeoutException as exc:
            raise ServingError(504, "llm_timeout", f"the LLM at {self.base} did not answer /v1/models in time") from exc
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if r.status_code >= 400:
            raise ServingError(502, "llm_error", f"the LLM at {self.base} answered /v1/models with {r.status_code}")
        return r.json().get("data", [])

    async def model(self) -> str:
        if self._model is None:
            models = await self._get_models()
            if not models:
                raise ServingError(502, "llm_error", f"the LLM at {self.base} serves no model")
            self._model = str(models[0]["id"])
            self._max_len = models[0].get("max_model_len") or 0  # 0: the server does not say; asked once
        return self._model

    async def max_model_len(self) -> int | None:
        """The model's window as vLLM reports it on /v1/models (None from servers that do not say)."""
        if self._max_len is None:
            name = await self.model()
            for m in await self._get_models():
                if m.get("id") == name:
                    self._max_len = m.get("max_model_len") or 0
        return self._max_len or None

    async def ready(self) -> None:
        await self._get_models()

    async def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens as the server's tokenizer and chat template count them (vLLM /tokenize); a server without
        it gets an estimate of 4 characters a token, the usual English average."""
        if self._tokenize:
            try:
                r = await self.http.post("/tokenize", json={"model": await self.model(), "messages": messages})
                if r.status_code == 200:
                    return int(r.json()["count"])
                self._tokenize = r.status_code not in (404, 405)
            except (httpx.HTTPError, KeyError, ValueError):
                pass
        return sum(len(str(m.get("content", ""))) for m in messages) // 4 + 8 * len(messages)

    async def stream(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> AsyncIterator[Delta]:
        """Deltas of one chat completion; the first arrives within the first-token timeout or ServingError(504)."""
        body = {"model": await self.model(), "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, **self.settings.llm_extra, **params}
        delays, attempt = self.settings.llm_retry_delays, 0
        while True:
            attempt += 1
            response, lines = None, None
            try:
                async with asyncio.timeout(self.settings.llm_first_token_timeout_s):
                    response = await self.http.send(self.http.build_request("POST", "/v1/chat/completions",
                                                                            json=body), stream=True)
                    if response.status_code >= 400:
                        await self._refused(response)
                    lines = response.aiter_lines()
                    first = await self._next_delta(lines)
                break
            except (httpx.HTTPError, TimeoutError, ServingError) as exc:
                if response is not None:
                    await response.aclose()
                retriable = (isinstance(exc, ServingError) and exc.status == 502) or (
                    isinstance(exc, httpx.HTTPError) and is_transient(exc))
                if not retriable or attempt > len(delays):
                    raise self._final(exc) from exc
                await asyncio.sleep(backoff(delays, attempt))
        try:
            if first is not None:
                yield first
                while (delta := await self._next_delta(lines)) is not None:
                    yield delta
        except httpx.TimeoutException as exc:
            raise ServingError(504, "llm_timeout", f"the LLM stopped sending for over "
                                                   f"{self.settings.llm_read_timeout_s:g} s mid-answer") from exc
        except httpx.HTTPError as exc:
            raise ServingError(502, "llm_disconnected", f"the LLM connection broke mid-answer ({exc!r})") from exc
        finally:
            await response.aclose()

    def _final(self, exc: BaseException) -> ServingError:
        if isinstance(exc, ServingError):
            return exc
        if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
            return ServingError(504, "llm_timeout", f"the LLM at {self.base} sent no token within "
                                f"{self.settings.llm_first_token_timeout_s:g} s (MILLRACE_LLM_FIRST_TOKEN_TIMEOUT_S)")
        return self._unreachable(exc)

    async def _refused(self, response: httpx.Response) -> None:
        text = (await response.aread()).decode("utf-8", "replace")[:500]
        try:
            message = json.loads(text).get("error", {}).get("message") or json.loads(text).get("message") or text
        except (ValueError, AttributeError):
            message = text
        if response.status_code in (400, 404, 413, 422):
            raise ServingError(400, "llm_rejected", f"the LLM refused the request: {message}")
        raise ServingError(502, "llm_error", f"the LLM answered {response.status_code}: {message}")

    @staticmethod
    async def _next_delta(lines: AsyncIterator[str]) -> Delta | None:
        """The next SSE data event as a Delta; None at [DONE] or the end of the stream."""
        async for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return None
            event = json.loads(data)
            if "error" in event:
                raise ServingError(502, "llm_error", f"the LLM failed mid-answer: {event['error']}")
            delta = Delta(usage={k: int(v) for k, v in (event.get("usage") or {}).items() if isinstance(v, int)})
            for choice in event.get("choices") or []:
                delta.text += (choice.get("delta") or {}).get("content") or ""
                delta.finish_reason = choice.get("finish_reason") or delta.finish_reason
            return delta
        return None


def elapsed_since(t0: float) -> float:
    return time.perf_counter() - t0
