"""The official SDKs' stream helpers over /v1/chat/completions keep every citation: openai-python's
`chat.completions.stream()` and openai-node's `.stream().finalChatCompletion()` (the npm package pinned in
tests/serving/node), through the real vLLM server with the tiny model nudged to write [n] markers (test_answer's
logit bias) and to end on its own after MIN_TOKENS tokens: openai-python's helper raises LengthFinishReasonError on
an answer cut at max_tokens, whatever the server.

The helpers accumulate list deltas in their own ways (Python merges entries by `index`, Node replaces the list), so
these tests read what the helpers end with, not the raw chunks alone."""

from __future__ import annotations

import re

import openai
import pytest
from tokenizers import Tokenizer

from tests.serving.harness import run_node, serve_app
from tests.serving.test_answer import QUESTION, llm_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIN_TOKENS, MAX_TOKENS = 40, 64
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def api(index, vllm_server):
    eos = Tokenizer.from_file(str(vllm_server.model_dir / "tokenizer.json")).token_to_id("<|im_end|>")
    bias = {str(vllm_server.markers[m]): 4.0 for m in ("[1]", "[2]", "[9]")} | {str(eos): 12.0}
    # vLLM's min_tokens holds the end of sequence back until then; past it the bias makes it the likeliest token.
    settings = llm_settings(index, vllm_server, cache=False, llm_extra={"logit_bias": bias, "min_tokens": MIN_TOKENS})
    with serve_app(settings) as url:
        yield url


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=api + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def passages(client, vllm_server) -> dict[int, dict]:
    """The passages the LLM is given for QUESTION (retrieval does not depend on the generation)."""
    whole = client.chat.completions.create(model=vllm_server.model, messages=MESSAGES, temperature=0,
                                           max_tokens=MAX_TOKENS)
    return {p["index"]: p for p in whole.model_extra["millrace"]["passages"]}


def assert_every_marker_annotated(content: str, annotations: list[dict], passages: dict[int, dict]) -> None:
    """One annotation per [n] left in the text, in order, each spanning exactly its marker and naming its passage."""
    markers = [(m.start(), m.end(), int(m.group(1))) for m in re.finditer(r"\[(\d+)\]", content)]
    assert len(markers) >= 3, f"too few markers to tell a kept list from a truncated one: {content!r}"
    spans = [(a["url_citation"]["start_index"], a["url_citation"]["end_index"]) for a in annotations]
    assert spans == [(s, e) for s, e, _ in markers], (spans, content)
    for a, (_, _, n) in zip(annotations, markers):
        assert a["type"] == "url_citation" and a["url_citation"]["url"] == passages[n]["source_uri"]


def test_the_python_stream_helper_keeps_every_annotation(client, vllm_server, passages):
    with client.chat.completions.stream(model=vllm_server.model, messages=MESSAGES, temperature=0,
                                        max_tokens=MAX_TOKENS, stream_options={"include_usage": True}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert kinds.count("content.delta") > 1 and "content.done" in kinds
    assert final.choices[0].finish_reason == "stop" and MIN_TOKENS <= final.usage.completion_tokens < MAX_TOKENS
    message = final.choices[0].message
    annotations = [a.model_dump() for a in message.annotations or []]
    assert_every_marker_annotated(message.content, annotations, passages)

    # create(stream=True) keeps working, and its deltas add up to the same text and annotations.
    chunks = list(client.chat.completions.create(model=vllm_server.model, messages=MESSAGES, temperature=0,
                                                 max_tokens=MAX_TOKENS, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    raw = [a for c in chunks if c.choices for a in (c.choices[0].delta.model_extra or {}).get("annotations", [])]
    assert (content, raw) == (message.content, annotations)
    assert [a.model_dump() for a in client.chat.completions.create(
        model=vllm_server.model, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS).choices[0].message.annotations
    ] == annotations  # the non-streamed form: the same list


def test_the_node_stream_helper_keeps_every_annotation(api, vllm_server, passages):
    out = run_node("chat_stream.mjs", {"base_url": api + "/v1", "model": vllm_server.model, "messages": MESSAGES,
                                       "max_tokens": MAX_TOKENS})
    helper, raw = out["helper"], out["raw"]
    assert helper["finish_reason"] == "stop" and helper["deltas"] > 1
    assert_every_marker_annotated(helper["content"], helper["annotations"], passages)
    assert (raw["content"], raw["annotations"]) == (helper["content"], helper["annotations"])
    cited = {int(m) for m in re.findall(r"\[(\d+)\]", helper["content"])}
    assert {c["index"] for c in helper["citations"]} == cited  # the final chunk's `citations` reach the snapshot too
