"""`POST /v1/responses`: OpenAI's Responses API over the same answering service as /v1/chat/completions.

Here `url_citation` annotations have their native place, `output[].content[].annotations` of the output_text part,
which LangChain (`ChatOpenAI(use_responses_api=True)`) and the SDKs' Responses helpers read. Streamed, each annotation
is its own `response.output_text.annotation.added` event with an `annotation_index`, right after the text delta that
wrote its marker, and the final `response.completed` (or `response.incomplete`) carries the whole output again: the
SDK accumulators (openai-python's `responses.stream()`, openai-node's `ResponseStream`) keep every annotation either
way. Responses are not stored, so `previous_response_id` is a 400 and the conversation travels in `input`."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from serving import routes, watermark
from serving.answering import Generation
from serving.citations import citation_of
from serving.errors import ServingError
from serving.responses_schemas import (IncompleteDetails, InputMessage, OutputMessage, OutputText, ResponseError,
                                       ResponseObject, ResponsesRequest, URLCitation, Usage, message_id, response_id)
from serving.schemas import now

router = APIRouter(dependencies=[Depends(routes.authorized)])

_TEXT_PARTS = ("input_text", "output_text", "text")


def conversation(body: ResponsesRequest) -> tuple[list[dict[str, Any]], str]:
    """The chat messages the answering service takes (instructions first, as a system message), and the question: the
    last user message with text. Input Millrace cannot read is a 400 naming it."""
    items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    messages = [{"role": "system", "content": body.instructions}] if body.instructions else []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind != "message":
            raise ServingError(400, "unsupported", f"input[{i}] is a {kind!r} item; only messages (role and content) "
                                                   "are supported here")
        try:
            message = InputMessage.model_validate(item)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(map(str, problem.get("loc", ())))
            raise ServingError(422, "invalid_request", f"input[{i}]{'.' + where if where else ''}: "
                                                       f"{problem.get('msg', 'invalid')}") from None
        if isinstance(message.content, str):
            text = message.content
        else:
            other = [p.type for p in message.content if p.type not in _TEXT_PARTS]
            if other:
                raise ServingError(400, "unsupported", f"input[{i}] has {other[0]!r} content; only text is "
                                                       "supported here")
            text = "".join(p.text or "" for p in message.content)
        messages.append({"role": "system" if message.role == "developer" else message.role, "content": text})
    query = next((m["content"] for m in reversed(messages) if m["role"] == "user" and m["content"].strip()), "")
    if not query:
        raise ServingError(422, "invalid_request", "input holds no user message with text to answer")
    return messages, query


def annotations(gen: Generation, spans: list[tuple[int, int, int]]) -> list[URLCitation]:
    """Each kept [n] marker as a url_citation spanning it (offsets into the whole output text)."""
    out = []
    for start, end, n in spans:
        c = citation_of(gen.filter.passages[n - 1])
        out.append(URLCitation(url=c.source_uri, title=c.title or "", start_index=start, end_index=end))
    return out


def finished(resp: ResponseObject, gen: Generation, item: OutputMessage, mark=None) -> ResponseObject:
    """`resp`, done: status from the finish reason (a cut answer is `incomplete`, as OpenAI reports it), the whole
    output, usage, and Millrace's citations and retrieval details."""
    a = routes.with_watermark(gen.answer(), mark)
    cut = a.finish_reason == "length"
    item.status = "incomplete" if cut else "completed"
    return resp.model_copy(update={
        "status": "incomplete" if cut else "completed", "output": [item], "usage": Usage.of(a.usage),
        "incomplete_details": IncompleteDetails(reason="max_output_tokens") if cut else None,
        "citations": [c.model_dump() for c in a.citations], "millrace": routes.millrace_extra(a)})


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request):
    svc = routes.services(request)
    if (reason := body.unsupported()) is not None:
        raise ServingError(400, "unsupported", reason)
    if not isinstance(body.input, str) and len(body.input) > svc.settings.max_messages:
        raise ServingError(422, "invalid_request", f"{len(body.input)} input items are more than the cap of "
                                                   f"{svc.settings.max_messages} (MILLRACE_MAX_MESSAGES)")
    messages, query = conversation(body)  # the request's own faults first: they are 4xx with or without an LLM
    model = await svc.answers.require_llm().model()
    if body.model and body.model not in (model, "millrace"):
        raise ServingError(404, "model_not_found", f"model {body.model!r} is not served here; GET /v1/models lists "
                                                   f"{model!r}")
    opts = body.millrace
    k = routes.capped_k(svc, opts.k if opts else None, svc.settings.answer_k)
    max_tokens = routes.capped_max_tokens(svc, body.max_output_tokens)
    temperature = svc.settings.llm_temperature if body.temperature is None else body.temperature
    params: dict[str, Any] = {"temperature": temperature}
    if body.top_p is not None:
        params["top_p"] = body.top_p
    mark = await watermark.current(svc.settings)  # read before retrieval, so it never claims more than was seen
    job = await svc.answers.prepare(messages, query, k, opts.mode if opts else "auto", opts.filter if opts else None,
                                    max_tokens, params)
    gen = await svc.answers.open(job)
    resp = ResponseObject(id=response_id(), created_at=now(), model=body.model or model,
                          instructions=body.instructions, max_output_tokens=max_tokens, temperature=temperature,
                          top_p=body.top_p, metadata=body.metadata or {}, user=body.user)
    item = OutputMessage(id=message_id())
    if not body.stream:
        a = await gen.finish()
        item.content = [OutputText(text=a.answer, annotations=annotations(gen, gen.filter.spans))]
        return finished(resp, gen, item, mark).model_dump(mode="json")
    return StreamingResponse(Events(resp, item, gen, mark).stream(), media_type="text/event-stream",
                             headers=routes.SSE_HEADERS)


class Events:
    """The SSE events of one streamed response, numbered by `sequence_number` in the order they are sent."""

    def __init__(self, resp: ResponseObject, item: OutputMessage, gen: Generation, mark=None):
        self.resp, self.item, self.gen, self.mark, self.seq = resp, item, gen, mark, 0

    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def stream(self) -> AsyncIterator[str]:
        resp, item, gen = self.resp, self.item, self.gen
        where = {"item_id": item.id, "output_index": 0}
        part = OutputText()
        try:
            yield self.event("response.created", response=resp.model_dump(mode="json"))
            yield self.event("response.in_progress", response=resp.model_dump(mode="json"))
            yield self.event("response.output_item.added", output_index=0, item=item.model_dump(mode="json"))
            yield self.event("response.content_part.added", **where, content_index=0,
                             part=part.model_dump(mode="json"))
            async for text, spans in gen.deltas():
                part.text += text
                yield self.event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[])
                for a in annotations(gen, spans):
                    yield self.event("response.output_text.annotation.added", **where, content_index=0,
                                     annotation_index=len(part.annotations), annotation=a.model_dump(mode="json"))
                    part.annotations.append(a)
            yield self.event("response.output_text.done", **where, content_index=0, text=part.text, logprobs=[])
            yield self.event("response.content_part.done", **where, content_index=0,
                             part=part.model_dump(mode="json"))
            item.content = [part]
            done = finished(resp, gen, item, self.mark)
            yield self.event("response.output_item.done", output_index=0, item=item.model_dump(mode="json"))
            yield self.event(f"response.{done.status}", response=done.model_dump(mode="json"))
        except ServingError as exc:
            # The status line is long sent: the failure is an `error` event, then `response.failed`, as OpenAI ends
            # a stream that breaks; the clients raise on either.
            yield self.event("error", code=exc.kind, message=exc.message, param=None)
            item.content, item.status = [part], "incomplete"
            failed = resp.model_copy(update={"status": "failed", "output": [item],
                                             "error": ResponseError(code="server_error", message=exc.message)})
            yield self.event("response.failed", response=failed.model_dump(mode="json"))
        finally:
            await gen.aclose()
