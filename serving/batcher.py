"""Micro-batching of query embeddings across concurrent requests.

No fixed wait: a query that arrives while the model is busy joins the next batch, and a query that finds the model
idle is encoded at once. So a lone request pays nothing, and under load each forward pass embeds everything that
queued behind the previous one, and throughput grows with concurrency (bench/serve.py). A model whose vectors depend
on their batch-mates (int8: millrace.documents.embed.Embedder.encode_queries) encodes a pass's queries one by one, so a
question's vector never depends on what else was asked at that moment; the pass still saves the thread hops."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


class MicroBatcher:
    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 64, memo: int = 4096,
                 on_batch: Callable[[int], None] | None = None):
        self._encode = encode
        self.max_batch = max_batch
        # One thread: torch already spreads a forward pass over the cores; two passes at once only contend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._running = False
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()  # a repeated query skips the model
        self._memo_size = memo
        self._on_batch = on_batch

    async def embed(self, text: str) -> np.ndarray:
        if (hit := self._memo.get(text)) is not None:
            self._memo.move_to_end(text)
            return hit
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((text, future))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
                texts = list(dict.fromkeys(t for t, _ in batch))  # identical concurrent queries encoded once
                try:
                    vectors = await loop.run_in_executor(self._executor, self._encode, texts)
                except Exception as exc:  # every waiter gets the model's error, none hangs
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                if self._on_batch:
                    self._on_batch(len(texts))
                by_text = dict(zip(texts, np.asarray(vectors, dtype=np.float32)))
                for text, vector in by_text.items():
                    self._memo[text] = vector
                while len(self._memo) > self._memo_size:
                    self._memo.popitem(last=False)
                for text, future in batch:
                    if not future.done():
                        future.set_result(by_text[text])
        finally:
            self._running = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
