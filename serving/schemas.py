"""The API's protocol models: Millrace's search and answer, and the OpenAI chat-completions subset it speaks.

The OpenAI models follow vLLM's protocol (vllm/entrypoints/openai/protocol.py): unknown request fields are ignored,
as OpenAI's server does, so clients that send newer fields keep working; bounds are checked here and answer 422."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["dense", "bm25", "hybrid", "auto"]


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_prefix: str | None = Field(None, description="only chunks whose source URI starts with this "
                                                        "(s3://bucket/prefix, a folder path or a file:// URI)")
    content_type: str | list[str] | None = Field(None, description="only these media types (prefix match, e.g. "
                                                                   "application/pdf, text/)")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=8192)
    k: int = Field(10, ge=1)
    mode: Mode = "auto"
    filter: Filter | None = None


class Passage(BaseModel):
    """One retrieved chunk, citable: `index` is its [n] in answers."""

    index: int = 0
    score: float
    chunk_id: str
    doc_id: str
    source_uri: str
    title: str = ""
    page: int = 0
    text: str


class IndexWatermark(BaseModel):
    """Changes that arrived through `searchable_through` are searchable (or failed with a reason `millrace status`
    shows); `pending_changes` are still queued, the oldest of them `oldest_pending_age_s` old."""

    searchable_through: datetime
    pending_changes: int
    oldest_pending_age_s: float


class SearchResponse(BaseModel):
    query: str
    mode: str
    hits: list[Passage]
    index_version: str
    collection: str  # the physical collection that answered
    cached: bool = False
    timings_ms: dict[str, float] = Field(default_factory=dict)
    watermark: IndexWatermark | None = None  # None when the change queue could not be read


class Citation(BaseModel):
    """What an [n] in an answer refers to."""

    index: int
    chunk_id: str
    doc_id: str
    source_uri: str
    title: str = ""
    page: int = 0


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=8192)
    k: int | None = Field(None, ge=1)
    mode: Mode = "auto"
    filter: Filter | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)


class Answer(BaseModel):
    answer: str
    citations: list[Citation]
    passages: list[Passage]
    finish_reason: str | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    index_version: str
    collection: str
    cached: bool = False
    timings_ms: dict[str, float] = Field(default_factory=dict)
    watermark: IndexWatermark | None = None


# --- OpenAI chat completions -------------------------------------------------------------------------------------

class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class RetrievalOptions(BaseModel):
    """Millrace's own request field (`extra_body={"millrace": {...}}` in the openai client)."""

    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(None, ge=1)
    mode: Mode = "auto"
    filter: Filter | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    n: Literal[1] = 1
    user: str | None = None
    millrace: RetrievalOptions | None = None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def url_citation(start: int, end: int, citation: Citation) -> dict[str, Any]:
    """OpenAI's annotation shape (chat completions `message.annotations`): the span of the [n] marker."""
    return {"type": "url_citation", "url_citation": {"start_index": start, "end_index": end,
                                                     "url": citation.source_uri, "title": citation.title or ""}}
