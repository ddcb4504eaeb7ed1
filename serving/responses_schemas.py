"""The protocol models of OpenAI's Responses API (`POST /v1/responses`), the subset Millrace speaks.

They mirror openai-python's `openai.types.responses` (Response, ResponseOutputMessage, ResponseOutputText and its
AnnotationURLCitation, ResponseUsage, the stream events) and vLLM's own anchor
(vllm/entrypoints/openai/responses/protocol.py). As on the chat route, unknown request fields are ignored, so clients
that send newer fields keep working; fields Millrace cannot honour are named in `unsupported()` and answer 400."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.schemas import RetrievalOptions


# --- request -----------------------------------------------------------------------------------------------------

class InputContent(BaseModel):
    """A content part of an input message: input_text (user), output_text (an earlier assistant turn), or a part
    Millrace cannot read (input_image, input_file, input_audio: refused with a reason)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class InputMessage(BaseModel):
    """An EasyInputMessage or a ResponseInputItem of type message: the only input items Millrace reads."""

    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputContent]


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "text"


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    # Items stay dicts here: an item type Millrace does not read (function_call_output, reasoning, ...) is a 400 that
    # names it (serving.responses), not a pydantic union error listing every variant.
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    text: TextConfig | None = None
    # Accepted only in the forms that ask for nothing Millrace lacks; see unsupported().
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = None
    millrace: RetrievalOptions | None = None

    def unsupported(self) -> str | None:
        """Why this request cannot be served as asked (a 400), or None."""
        if self.tools:
            return ("tools are not supported: Millrace answers from its own index (retrieval is built in, tune it "
                    "with extra_body={\"millrace\": {\"k\", \"mode\", \"filter\"}}); send no `tools`")
        if isinstance(self.tool_choice, dict) or self.tool_choice not in (None, "auto", "none"):
            return f"tool_choice {self.tool_choice!r} is not supported: no tools can be called here"
        if self.previous_response_id:
            return ("previous_response_id is not supported: responses are not stored; send the whole conversation "
                    "as a list of messages in `input`")
        if self.conversation:
            return "conversation is not supported: responses are not stored; send the conversation in `input`"
        if self.background:
            return "background responses are not supported: responses are not stored; use stream=true instead"
        if self.prompt:
            return "prompt templates are not supported: send `instructions` and `input`"
        if self.reasoning and any(v is not None for v in self.reasoning.values()):
            return "reasoning options are not supported by this model"
        if self.top_logprobs:
            return "top_logprobs is not supported"
        if self.text and self.text.format and self.text.format.type != "text":
            return (f"text.format {self.text.format.type!r} is not supported: answers are text with [n] citations "
                    "(format type \"text\")")
        return None


# --- response ----------------------------------------------------------------------------------------------------

class URLCitation(BaseModel):
    """AnnotationURLCitation: the [n] marker at text[start_index:end_index] cites the document at `url`."""

    type: Literal["url_citation"] = "url_citation"
    url: str
    title: str
    start_index: int
    end_index: int


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str = ""
    annotations: list[URLCitation] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"
    content: list[OutputText] = Field(default_factory=list)


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)

    @classmethod
    def of(cls, usage: dict[str, int]) -> "Usage":
        """From the LLM's chat-completions usage (prompt/completion tokens)."""
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        return cls(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(BaseModel):
    """The Response object; `citations` and `millrace` are Millrace's own fields, as on the chat route."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"] = "in_progress"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage] = Field(default_factory=list)
    parallel_tool_calls: bool = False
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str = "none"
    tools: list[Any] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: str = "disabled"
    store: bool = False  # never stored: there is no GET /v1/responses/{id}
    metadata: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    usage: Usage | None = None


def response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"
