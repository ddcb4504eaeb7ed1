"""/v1/responses (and, for contrast, /v1/chat/completions) through the clients people use, against the real vLLM
server: LangChain's ChatOpenAI in both of its modes and the official openai npm package. Every citation must survive
where the client keeps it, and span its [n]."""

from __future__ import annotations

import json
import re
from functools import reduce

import httpx
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI

from tests.serving.harness import run_node, serve_app
from tests.serving.test_answer import QUESTION
from tests.serving.test_responses import check_annotations, stopping_settings, text_part

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPTIONS = {"k": 3}


@pytest.fixture(scope="module")
def api(index, vllm_server):
    with serve_app(stopping_settings(index, vllm_server, eos_bias=100.0)) as url:
        yield url


def passages(api: str) -> list[dict]:
    """The passages the question retrieves (retrieval is deterministic for one index version): what [n] names."""
    r = httpx.post(api + "/v1/responses", json={"model": "millrace", "input": QUESTION, "millrace": OPTIONS},
                   timeout=120)
    return r.json()["millrace"]["passages"]


def chat(api: str, **kw) -> ChatOpenAI:
    return ChatOpenAI(model="millrace", base_url=api + "/v1", api_key="unused", temperature=0, max_retries=0,
                      timeout=120, extra_body={"millrace": OPTIONS}, **kw)


def text_blocks(message: AIMessage) -> list[dict]:
    assert isinstance(message.content, list), message.content
    return [b for b in message.content if b.get("type") == "text"]


def test_langchain_responses_mode_keeps_every_citation_invoked_and_streamed(api):
    given = passages(api)
    llm = chat(api, use_responses_api=True)

    whole = llm.invoke(QUESTION)
    [block] = text_blocks(whole)
    assert block["annotations"], f"the biased model wrote no valid marker: {block['text']!r}"
    check_annotations(block["text"], block["annotations"], given)
    assert whole.response_metadata["status"] == "completed" and whole.id.startswith("resp_")
    assert whole.usage_metadata["output_tokens"] > 0

    chunks = list(llm.stream(QUESTION))
    streamed = reduce(lambda a, b: a + b, chunks)
    [block] = text_blocks(streamed)
    # LangChain merges each annotation.added event into the text block it belongs to (by the block's index).
    added = [a for c in chunks if isinstance(c.content, list) for b in c.content for a in b.get("annotations", [])]
    assert block["annotations"] and block["annotations"] == added
    check_annotations(block["text"], block["annotations"], given)
    assert streamed.response_metadata["status"] == "completed" and streamed.usage_metadata["output_tokens"] > 0


def test_langchain_chat_completions_mode_keeps_the_markers_but_drops_annotations(api):
    """LangChain's chat-completions path builds its AIMessage from the message's role, content, tool calls, function
    call and audio only (langchain_openai.chat_models.base._convert_dict_to_message; deltas likewise), and its
    response_metadata from usage, model, id and fingerprint: `message.annotations` and Millrace's `citations` are
    dropped by design, on any server. What survives is the text with its valid [n] markers. Hence the README's
    advice: LangChain users take `use_responses_api=True`."""
    given = passages(api)
    raw = httpx.post(api + "/v1/chat/completions", json={"model": "millrace", "millrace": OPTIONS,
                                                         "messages": [{"role": "user", "content": QUESTION}]},
                     timeout=120).json()
    assert raw["choices"][0]["message"]["annotations"]  # the API sends them ...
    llm = chat(api, stream_usage=True)  # a custom base_url streams no usage unless asked
    for message in (llm.invoke(QUESTION), reduce(lambda a, b: a + b, llm.stream(QUESTION))):
        assert isinstance(message.content, str)
        # ... LangChain keeps none of them, nowhere.
        assert "annotations" not in json.dumps([message.additional_kwargs, message.response_metadata])
        assert "url_citation" not in json.dumps(message.model_dump())
        markers = [int(n) for n in re.findall(r"\[(\d+)\]", message.content)]
        assert markers and set(markers) <= {p["index"] for p in given}  # the markers are all valid ones
        assert message.response_metadata["finish_reason"] == "stop"
        assert message.usage_metadata["output_tokens"] > 0


def test_openai_node_keeps_every_citation_created_and_streamed(api):
    given = passages(api)
    out = run_node("responses.mjs", {"base_url": api + "/v1", "model": "millrace", "input": QUESTION,
                                     "millrace": OPTIONS})
    for name in ("created", "streamed"):
        response = out[name]
        part = text_part(response)
        assert response["status"] == "completed" and part["annotations"], part
        assert out["output_text"][name] == part["text"]
        check_annotations(part["text"], part["annotations"], given)
    assert text_part(out["created"]) == text_part(out["streamed"])  # temperature 0: the same answer twice
    events = out["events"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added = [e["annotation_index"] for e in events if e["type"] == "response.output_text.annotation.added"]
    assert added == list(range(len(text_part(out["streamed"])["annotations"])))
    assert out["refused"]["status"] == 400 and "tools are not supported" in out["refused"]["message"]
