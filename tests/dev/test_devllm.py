"""The real LLM server and Redis the serving tests stand on: the tiny model, vLLM (CPU) speaking OpenAI, redis-server."""

import json
import urllib.request

import pytest

from dev import devllm

MESSAGES = [{"role": "system", "content": "Answer from the sources and cite them."},
            {"role": "user", "content": "What drives the mill wheel?"}]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.integration
def test_tiny_model_markers_are_single_tokens_and_it_has_a_chat_template(tiny_llm_dir):
    from transformers import AutoTokenizer

    assert devllm.build_tiny_model(tiny_llm_dir) == tiny_llm_dir  # idempotent
    markers = devllm.marker_token_ids(tiny_llm_dir)
    assert sorted(markers) == [f"[{i}]" for i in range(1, 10)] and len(set(markers.values())) == 9
    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    for marker, token_id in markers.items():
        assert tok.encode(marker, add_special_tokens=False) == [token_id]
        assert token_id in tok.encode(f"The mill turns {marker}.", add_special_tokens=False)
        assert tok.decode([token_id]) == marker
    assert tok.decode(tok.encode("The river turns the wheel [2][7].", add_special_tokens=False)) == \
        "The river turns the wheel [2][7]."
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nAnswer from the sources")
    assert "<|im_start|>user\nWhat drives the mill wheel?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert not tok.apply_chat_template(MESSAGES, tokenize=False).endswith("assistant\n")
    assert (tiny_llm_dir / "model.safetensors").is_file()


@pytest.mark.integration
@pytest.mark.slow
def test_vllm_serves_the_tiny_model_over_openai(vllm_server):
    import openai

    client = openai.OpenAI(base_url=vllm_server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    params = dict(model=vllm_server.model, messages=MESSAGES, temperature=0, max_tokens=16)
    bias = {str(vllm_server.markers["[1]"]): 8}

    # Streamed, with the citation marker favoured: chunks end with a finish_reason and the text cites [1].
    text, finish = "", None
    for chunk in client.chat.completions.create(**params, stream=True, logit_bias=bias):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish in ("stop", "length") and "[1]" in text, (finish, text)

    # Token counting lives at the server's root; /v1/models tells the context length.
    counted = post(vllm_server.url + "/tokenize", {"model": vllm_server.model, "prompt": "hello"})
    assert counted["count"] >= 1 and counted["max_model_len"] == 2048
    with urllib.request.urlopen(vllm_server.url + "/v1/models", timeout=10) as r:
        models = json.loads(r.read())["data"]
    assert [m["id"] for m in models] == [vllm_server.model] and models[0]["max_model_len"] == 2048

    # temperature 0 is deterministic, streamed or not (serving's answers and their citations rely on it).
    first = client.chat.completions.create(**params).choices[0].message.content
    second = client.chat.completions.create(**params).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**params, stream=True)
                       if c.choices)
    assert first and first == second == streamed


@pytest.mark.integration
def test_redis_server_is_real(redis_url):
    import redis

    r = redis.Redis.from_url(redis_url)
    r.set("millrace:k", "v", ex=60)
    assert r.get("millrace:k") == b"v" and r.info("server")["redis_version"].startswith("6.")
    r.close()
