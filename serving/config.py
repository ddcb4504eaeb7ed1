"""Settings of the serving process: the core's settings (Milvus, model, collection, ledger) plus the API's own.

Every field reads MILLRACE_<NAME> from the environment like the core's; secrets are SecretStr, so they never reach
a log line, a cache key or a metric label."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from millrace.config import Settings


def _list(value: Any) -> Any:
    """A list from JSON (`["a","b"]`) or from commas (`a,b`), the way people write keys in an env file."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class ServeSettings(Settings):
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000

    # The LLM: any OpenAI-compatible server (vLLM: `vllm serve MODEL`). Empty: answers are refused with 503, search works.
    llm_url: str = ""
    llm_model: str = ""  # empty: the first model the server lists
    llm_api_key: SecretStr = SecretStr("")
    llm_connect_timeout_s: float = 3.0
    llm_first_token_timeout_s: float = 60.0  # waiting for the first token (prefill and queueing included): 504 after
    llm_read_timeout_s: float = 30.0  # longest silence between two streamed chunks
    # Retries happen only before the first token reaches the client (a retried stream would repeat text).
    llm_retry_delays: list[float] = Field(default_factory=lambda: [0.5, 1.5])
    # Extra sampling parameters sent upstream with every generation (vLLM's repetition_penalty, top_k, logit_bias, ...);
    # a request's own parameters win.
    llm_extra: dict[str, Any] = Field(default_factory=dict)
    llm_temperature: float = 0.0  # deterministic answers by default: the same question gets the same citations
    max_tokens: int = 512  # default answer length
    max_tokens_cap: int = 4096  # 422 above
    answer_k: int = 5  # passages given to the LLM by default
    top_k_cap: int = 100  # 422 above
    max_body_bytes: int = 1_000_000  # 413 above
    max_messages: int = 256  # 422 above

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys_block: str = ""  # a Prefect Secret block holding a key or a JSON list of keys
    rate_limit_per_min: int = 0  # requests per key (or per client address without keys) and minute; 0: off
    # Set: /metrics wants `Authorization: Bearer <token>` (Prometheus' `authorization` block); empty: /metrics is open,
    # as vLLM's is. Either way a scrape never counts against a user's rate limit.
    metrics_token: SecretStr = SecretStr("")
    # The secret the prompt's fence tag is derived from (serving.prompt.fence_tag). Empty: one is generated once and
    # kept in <home>/fence.key; replicas that do not share a home should share this value so they build the same prompt.
    fence_key: SecretStr = SecretStr("")

    redis_url: SecretStr = SecretStr("")  # set: caches and rate limits live in this Redis, shared by replicas
    cache: bool = True  # exact result cache, keyed by the index version
    cache_ttl_s: float = 3600.0
    cache_max_entries: int = 10_000  # in-process cache bound (Redis bounds itself by TTL and its own maxmemory)
    semantic_cache: bool = False  # opt-in: answers reused for queries whose embedding is this close
    semantic_threshold: float = 0.95
    semantic_max_entries: int = 1000

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return _list(value)

    @property
    def llm_base(self) -> str:
        """The server's root (without /v1): vLLM's /tokenize lives there."""
        url = self.llm_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url


def load_serve_settings(**overrides: Any) -> ServeSettings:
    flags = {k: v for k, v in overrides.items() if v is not None and v != []}
    return ServeSettings(**flags)
