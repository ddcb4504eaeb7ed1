"""/v1/responses (OpenAI's Responses API) through the real vLLM server (CPU build, tiny random model) and the official
openai-python client: url_citation annotations in their native place, streamed and not, and the refusals.

As in test_answer, a logit bias on the marker tokens makes the gibberish model write [n] markers, valid ones ([1],
[2]) and one that names no passage ([9]). `min_tokens` plus a large bias on the end-of-turn token makes every
generation stop by itself after 20 tokens: the stream helper's final response needs `response.completed`, which a
cut answer (`response.incomplete`, as OpenAI sends it) never gets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydantic import SecretStr

from tests.serving.harness import serve_app
from tests.serving.test_answer import QUESTION, dying_llm, llm_settings, sse
from tests.serving.test_hostile import assert_handled, json_value

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIN_TOKENS = 20
LIFECYCLE = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def eos_id(model_dir: Path) -> int:
    added = json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]
    return next(t["id"] for t in added if t["content"] == "<|im_end|>")


def stopping_settings(index, vllm_server, eos_bias: float, **extra):
    """Markers favoured; the end-of-turn token pushed by `eos_bias` (past MIN_TOKENS when positive)."""
    bias = {str(vllm_server.markers[m]): 4.0 for m in ("[1]", "[2]", "[9]")}
    bias[str(eos_id(vllm_server.model_dir))] = eos_bias
    llm_extra = {"logit_bias": bias, **({"min_tokens": MIN_TOKENS} if eos_bias > 0 else {})}
    return llm_settings(index, vllm_server, cache=False, max_tokens=32, llm_extra=llm_extra, **extra)


@pytest.fixture(scope="module")
def api(index, vllm_server):
    with serve_app(stopping_settings(index, vllm_server, eos_bias=100.0)) as url:
        yield url


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def check_annotations(text: str, annotations: list[dict], passages: list[dict]) -> None:
    """Each annotation spans exactly its [n] marker and names passage n's source; every marker in the text has one."""
    by_index = {p["index"]: p for p in passages}
    for a in annotations:
        marker = text[a["start_index"]:a["end_index"]]
        n = int(marker.strip("[]"))
        assert marker == f"[{n}]" and n in by_index, (marker, a)
        assert a["type"] == "url_citation" and a["url"] == by_index[n]["source_uri"]
        assert a["title"] == by_index[n]["title"]
    spans = [(a["start_index"], a["end_index"]) for a in annotations]
    assert spans == [m.span() for m in re.finditer(r"\[\d+\]", text)]  # no marker without its annotation (no [9])


def text_part(response) -> dict:
    """The output_text part of a response's single message, as a dict whichever client model holds it."""
    data = response if isinstance(response, dict) else response.model_dump()
    assert [o["type"] for o in data["output"]] == ["message"]
    parts = data["output"][0]["content"]
    assert [p["type"] for p in parts] == ["output_text"]
    return {k: v for k, v in parts[0].items() if k != "parsed"}  # `parsed`: the stream helper's own addition


def test_create_puts_every_citation_on_the_output_text(api, vllm_server):
    r = client(api).responses.create(model=vllm_server.model, input=QUESTION, instructions="Answer briefly.",
                                     temperature=0, extra_body={"millrace": {"k": 3, "mode": "hybrid"}})
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    part = text_part(r)
    passages = r.model_extra["millrace"]["passages"]
    assert part["annotations"], f"the biased model wrote no valid marker: {part['text']!r}"
    assert r.output_text == part["text"] and len(passages) <= 3
    check_annotations(part["text"], part["annotations"], passages)
    cited = {int(part["text"][a["start_index"] + 1:a["end_index"] - 1]) for a in part["annotations"]}
    assert {c["index"] for c in r.model_extra["citations"]} == cited
    assert r.usage.input_tokens > 0 and r.usage.output_tokens >= MIN_TOKENS
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Answer briefly." and r.temperature == 0


def test_the_stream_helper_keeps_every_annotation(api, vllm_server):
    events, texts = [], []
    with client(api).responses.stream(model=vllm_server.model, temperature=0,
                                      input=[{"role": "user", "content": QUESTION}]) as stream:
        for event in stream:
            events.append(event)
            if event.type == "response.output_text.delta":
                texts.append(event.delta)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e.annotation.model_dump() for e in events if e.type == "response.output_text.annotation.added"]
    assert [e.annotation_index for e in events if e.type == "response.output_text.annotation.added"] == \
        list(range(len(added)))
    part = text_part(final)
    assert final.status == "completed" and part["text"] == "".join(texts) == final.output_text
    assert added and part["annotations"] == added
    check_annotations(part["text"], part["annotations"], final.model_extra["millrace"]["passages"])
    assert final.usage.output_tokens >= MIN_TOKENS
    # Temperature 0, the cache off: the same question gets the same prompt, so the same answer and citations.
    again = client(api).responses.create(model=vllm_server.model, temperature=0, input=QUESTION)
    assert text_part(again) == part and again.usage.input_tokens == final.usage.input_tokens


def test_the_event_stream_is_openais_sequence(api, vllm_server):
    r = httpx.post(api + "/v1/responses", json={"model": "millrace", "input": QUESTION, "stream": True}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [(name, json.loads(data)) for name, data in sse(r)]
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)  # no [DONE]: the Responses API ends on its last event
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert names[:4] == LIFECYCLE and names[-4:] == [*CLOSING, "response.completed"]
    middle = names[4:-4]
    assert set(middle) == {"response.output_text.delta", "response.output_text.annotation.added"}
    assert middle[0] == "response.output_text.delta"  # an annotation comes after the delta that wrote its marker
    text = ""
    for name, data in events[4:-4]:
        if name == "response.output_text.delta":
            text += data["delta"]
        else:
            assert data["annotation"]["end_index"] <= len(text)
    final = events[-1][1]["response"]
    assert text_part(final)["text"] == text == events[-4][1]["text"]
    assert text_part(final) == events[-3][1]["part"] == events[-2][1]["item"]["content"][0]
    assert events[-2][1]["item"]["status"] == "completed" and final["model"] == "millrace"
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["output"] == []


def test_a_cut_answer_is_incomplete(index, vllm_server):
    with serve_app(stopping_settings(index, vllm_server, eos_bias=-100.0)) as url:
        whole = client(url).responses.create(model="millrace", input=QUESTION, max_output_tokens=8)
        assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
        assert whole.output[0].status == "incomplete" and whole.usage.output_tokens == 8
        events = list(client(url).responses.create(model="millrace", input=QUESTION, max_output_tokens=8,
                                                   stream=True))
        assert events[-1].type == "response.incomplete" and events[-1].response.status == "incomplete"
        assert events[-2].item.status == "incomplete"


def test_what_cannot_be_served_is_a_4xx_with_a_reason(api, vllm_server):
    c = client(api)

    def refused(status: int, words: str, **body):
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as caught:
                c.responses.create(**{"model": "millrace", "input": QUESTION, "stream": stream, **body})
            assert caught.value.status_code == status and words in caught.value.message, caught.value.message

    refused(400, "tools are not supported", tools=[{"type": "function", "name": "f", "parameters": {}}])
    refused(400, "tools are not supported", tools=[{"type": "web_search"}])
    refused(400, "previous_response_id", previous_response_id="resp_123")
    refused(400, "json_schema", text={"format": {"type": "json_schema", "name": "x", "schema": {}}})
    refused(400, "'input_image'", input=[{"role": "user", "content": [
        {"type": "input_text", "text": QUESTION}, {"type": "input_image", "image_url": "https://x/y.png"}]}])
    refused(400, "'function_call_output'", input=[{"type": "function_call_output", "call_id": "c", "output": "x"}])
    refused(404, "not served here", model="gpt-nothing")
    refused(422, "no user message", input=[{"role": "assistant", "content": "only me"}])
    refused(422, "above the cap", extra_body={"millrace": {"k": 1000}})
    refused(422, "above the cap", max_output_tokens=100_000)
    r = httpx.post(api + "/v1/responses", json={"input": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("input[0].role")
    assert httpx.post(api + "/v1/responses", json={"model": "millrace"}).status_code == 422


item = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["message", "function_call_output", "reasoning", "item_reference", 7]),
    "role": st.sampled_from(["user", "assistant", "developer", "system", "tool", ""]),
    "content": st.one_of(json_value, st.lists(st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["input_text", "output_text", "input_image", "input_file", ""]),
        "text": json_value}), max_size=3))})
bodies = st.fixed_dictionaries({}, optional={
    "input": st.one_of(json_value, st.lists(item, max_size=4)), "instructions": json_value, "model": json_value,
    "tools": json_value, "tool_choice": json_value, "text": json_value, "reasoning": json_value,
    "previous_response_id": json_value, "max_output_tokens": json_value, "temperature": json_value,
    "stream": json_value, "millrace": json_value, "metadata": json_value})


@pytest.fixture(scope="module")
def no_llm(index):
    """The app in process without an LLM, as test_hostile runs it: what a body gets short of generating."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(index[0]), raise_server_exceptions=False) as c:
        yield c


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(body=bodies)
def test_any_body_gets_a_handled_answer(no_llm, body):
    """Every body is a 4xx with a reason, or the 503 saying no LLM is configured; never a 500."""
    r = no_llm.post("/v1/responses", content=json.dumps(body), headers={"content-type": "application/json"})
    assert_handled(r)
    assert 400 <= r.status_code < 500 or r.status_code == 503 and "MILLRACE_LLM_URL" in r.text


def test_a_conversation_with_instructions_and_earlier_turns(api):
    """An earlier assistant turn as LangChain sends it back (output_text parts with annotations) is read as text."""
    earlier = {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
               "content": [{"type": "output_text", "text": "Fifteen days [1].", "annotations": [
                   {"type": "url_citation", "url": "file:///x", "title": "", "start_index": 13, "end_index": 16}]}]}
    r = client(api).responses.create(model="millrace", input=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": QUESTION}, earlier,
        {"role": "user", "content": [{"type": "input_text", "text": "And after five years?"}]}])
    assert r.status == "completed"
    check_annotations(text_part(r)["text"], text_part(r)["annotations"], r.model_extra["millrace"]["passages"])


def test_keys_rate_limit_and_metrics_are_the_chat_routes(index, vllm_server):
    settings = stopping_settings(index, vllm_server, eos_bias=100.0, api_keys=[SecretStr("k1")], rate_limit_per_min=2)
    with serve_app(settings) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, key="wrong").responses.create(model="millrace", input=QUESTION)
        client(url, key="k1").responses.create(model="millrace", input=QUESTION, stream=True).close()
        with pytest.raises(openai.RateLimitError):
            # The limit is per one-minute window: within 2 * limit + 1 requests one window fills, wherever the
            # minute turns.
            for _ in range(5):
                assert client(url, key="k1").responses.create(model="millrace", input=QUESTION).status == "completed"
        metrics = httpx.get(url + "/metrics", headers={"Authorization": "Bearer k1"}).text
        for status in ("200", "401", "429"):
            assert f'millrace_request_seconds_count{{route="/v1/responses",status="{status}"}}' in metrics
        assert 'millrace_errors_total{kind="rate_limited"}' in metrics
        assert 'millrace_stage_seconds_count{stage="ttft"}' in metrics


def test_a_cached_answer_replays_its_citations(index, vllm_server):
    settings = stopping_settings(index, vllm_server, eos_bias=100.0).model_copy(update={"cache": True})
    with serve_app(settings) as url:
        first = client(url).responses.create(model="millrace", input=QUESTION)
        with client(url).responses.stream(model="millrace", input=QUESTION) as stream:
            replayed = stream.get_final_response()
        assert not first.model_extra["millrace"]["cached"] and replayed.model_extra["millrace"]["cached"]
        assert text_part(replayed) == text_part(first) and text_part(first)["annotations"]
        assert replayed.usage.output_tokens == first.usage.output_tokens


def test_the_llm_killed_mid_stream_ends_the_stream_with_error_then_failed(index, vllm_server):
    """Last in this module: it kills the session's vLLM server, and starts it again (also when it fails)."""
    try:
        with dying_llm(index, vllm_server) as settings, serve_app(settings) as url:
            with client(url).responses.create(model="millrace", input=QUESTION, max_output_tokens=1200,
                                              stream=True, extra_body={"millrace": {"k": 1}}) as stream:
                vllm_server.kill()  # the stream opens once the LLM's first token is in
                events = list(stream)
            assert [e.sequence_number for e in events] == list(range(len(events)))
            assert events[0].type == "response.created"
            assert [e.type for e in events[-2:]] == ["error", "response.failed"]
            assert events[-2].code in ("llm_disconnected", "llm_error", "llm_timeout") and events[-2].message
            failed = events[-1].response
            assert failed.status == "failed" and failed.error.code == "server_error"
            assert failed.output[0].status == "incomplete"
    finally:
        vllm_server.restart()
