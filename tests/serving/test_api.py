"""The API over a real Milvus Lite index built by a real ingest: search, filters, hybrid, auth, limits, health,
readiness and metrics, and answers refused clearly without an LLM."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from pydantic import SecretStr

from millrace.uris import path_to_uri
from serving.config import ServeSettings
from tests.serving.harness import RARE, serve_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(index):
    settings, _ = index
    with serve_app(settings) as url:
        yield url


def post(url: str, path: str, body, **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60, **kw)


def test_search_returns_citable_chunks_with_the_index_version(api, index):
    r = post(api, "/v1/search", {"query": "How many days of paid leave do new employees get?", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "hybrid" and body["collection"] == index[0].collection
    assert body["index_version"].startswith(index[0].collection + "@")
    top = body["hits"][0]
    assert top["source_uri"].endswith("employee-handbook.pdf") and top["page"] == 2
    assert {"score", "doc_id", "chunk_id", "title", "text", "index"} <= set(top)
    assert [h["index"] for h in body["hits"]] == [1, 2, 3]
    again = post(api, "/v1/search", {"query": "How many days of paid leave do new employees get?", "k": 3}).json()
    assert again["cached"] and again["hits"] == body["hits"]


def test_hybrid_finds_an_exact_rare_term_that_dense_misses(api):
    target = "spring%20inspection%20log.txt"
    query = f"which gaskets fit {RARE}"  # the valve notes (seal kits) are nearer in meaning; only the log has the term
    dense = post(api, "/v1/search", {"query": query, "k": 1, "mode": "dense"}).json()["hits"]
    hybrid = post(api, "/v1/search", {"query": query, "k": 1, "mode": "hybrid"}).json()["hits"]
    bm25 = post(api, "/v1/search", {"query": query, "k": 1, "mode": "bm25"}).json()["hits"]
    assert bm25[0]["source_uri"].endswith(target)
    assert hybrid[0]["source_uri"].endswith(target)
    assert not dense[0]["source_uri"].endswith(target), dense


@pytest.mark.parametrize("prefix_kind", ["path", "uri", "s3-miss"])
def test_a_source_prefix_filter_keeps_only_that_folder(api, index, prefix_kind):
    folder = index[1] / "Wartung & Übersicht" / "valves #2"
    prefix = {"path": str(folder) + "/", "uri": path_to_uri(folder) + "/", "s3-miss": "s3://elsewhere/x"}[prefix_kind]
    r = post(api, "/v1/search", {"query": "valve maintenance", "k": 10, "filter": {"source_prefix": prefix}})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    if prefix_kind == "s3-miss":
        assert hits == []
    else:
        assert len(hits) == 6 and all(h["source_uri"].startswith(path_to_uri(folder) + "/") for h in hits)


def test_a_content_type_filter(api):
    hits = post(api, "/v1/search", {"query": "employees", "k": 10, "filter": {"content_type": "application/pdf"}}
                ).json()["hits"]
    assert hits and all(h["source_uri"].endswith(".pdf") for h in hits)
    text = post(api, "/v1/search", {"query": "employees", "k": 10, "filter": {"content_type": ["text/plain"]}}
                ).json()["hits"]
    assert text and all(h["source_uri"].endswith(".txt") for h in text)


def test_bad_requests_are_4xx_with_a_reason(api):
    assert post(api, "/v1/search", {"query": "x", "k": 101}).status_code == 422
    assert post(api, "/v1/search", {"query": ""}).status_code == 422
    assert post(api, "/v1/search", {"query": "x", "mode": "fuzzy"}).status_code == 422
    assert post(api, "/v1/search", {"query": "x", "filter": {"owner": "me"}}).status_code == 422
    bad = httpx.post(api + "/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and "error" in bad.json()
    big = httpx.post(api + "/v1/search", content=b"{" + b" " * 2_000_000 + b"}",
                     headers={"content-type": "application/json"})
    assert big.status_code == 413 and "MILLRACE_MAX_BODY_BYTES" in big.json()["error"]["message"]

    def chunked():
        yield b'{"query": "'
        for _ in range(300):
            yield b"x" * 4096
        yield b'"}'

    streamed = httpx.post(api + "/v1/search", content=chunked(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_without_an_llm_answers_are_503_and_search_still_works(api):
    for path, body in (("/v1/answer", {"query": "paid leave"}),
                       ("/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "hi"}]})):
        r = post(api, path, body)
        assert r.status_code == 503 and "MILLRACE_LLM_URL" in r.json()["error"]["message"]
    assert post(api, "/v1/search", {"query": "paid leave"}).status_code == 200


def test_health_ready_and_metrics(api, index):
    assert httpx.get(api + "/health").json() == {"status": "ok"}
    ready = httpx.get(api + "/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["milvus"]["collection"] == index[0].collection
    assert ready.json()["checks"]["llm"] == {"configured": False}
    post(api, "/v1/search", {"query": "turbine inspection", "k": 2})
    text = httpx.get(api + "/metrics").text
    for name in ('millrace_stage_seconds_count{stage="embed"}', 'millrace_stage_seconds_count{stage="search"}',
                 'millrace_cache_lookups_total{cache="exact_search",result="hit"}',
                 'millrace_errors_total{kind="invalid_request"}', "millrace_last_ingest_timestamp_seconds",
                 "millrace_upload_to_searchable_p95_seconds", "millrace_indexed_documents"):
        assert name in text, name


def test_the_page_and_its_assets_are_served(api):
    page = httpx.get(api + "/")
    assert page.status_code == 200 and "/static/page.js" in page.text
    assert httpx.get(api + "/static/page.js").status_code == 200


def test_a_cited_document_opens_from_its_source(api):
    hit = post(api, "/v1/search", {"query": "valve maintenance", "k": 1}).json()["hits"][0]
    r = httpx.get(f"{api}/v1/sources/{hit['doc_id']}")
    assert r.status_code == 200 and b"Valve maintenance note" in r.content
    assert httpx.get(f"{api}/v1/sources/{'0' * 32}").status_code == 404
    assert httpx.get(f"{api}/v1/sources/..%2F..%2Fetc%2Fpasswd").status_code == 404


def fresh_window() -> None:
    """Waits, if need be, until the rate limiter's one-minute window has 20 s left, so a test's counts all land in one
    window (the counts are asserted, not the time)."""
    left = 60 - time.time() % 60
    if left < 20:
        time.sleep(left + 0.2)


def test_keys_and_rate_limits(index):
    settings = index[0].model_copy(update={"api_keys": [SecretStr("k-one"), SecretStr("k-two")], "rate_limit_per_min": 3})
    with serve_app(settings) as url:
        fresh_window()
        body = {"query": "turbine", "k": 1}
        assert post(url, "/v1/search", body).status_code == 401
        assert post(url, "/v1/search", body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(url + "/health").status_code == 200
        one = {"Authorization": "Bearer k-one"}
        assert post(url, "/v1/search", body, headers=one).status_code == 200
        # Probes and scrapes, many more than the limit, none counted: k-one still has exactly 2 requests left.
        for _ in range(10):
            assert httpx.get(url + "/metrics").status_code == 200  # open: no MILLRACE_METRICS_TOKEN
            assert httpx.get(url + "/metrics", headers=one).status_code == 200
            assert httpx.get(url + "/ready", headers=one).status_code == 200
            assert httpx.get(url + "/health", headers=one).status_code == 200
        assert httpx.get(url + "/ready").status_code == 401  # its checks name the backends: a key is still needed
        assert [post(url, "/v1/search", body, headers=one).status_code for _ in range(2)] == [200] * 2
        limited = post(url, "/v1/search", body, headers=one)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        # The limit is per key: the other key still gets through.
        assert post(url, "/v1/search", body, headers={"Authorization": "Bearer k-two"}).status_code == 200


def test_a_scrape_token_guards_metrics_and_no_scrape_or_probe_spends_a_users_quota(index):
    settings = index[0].model_copy(update={"api_keys": [SecretStr("k-one")], "rate_limit_per_min": 2,
                                           "metrics_token": SecretStr("scrape-secret")})
    scraper, one = {"Authorization": "Bearer scrape-secret"}, {"Authorization": "Bearer k-one"}
    with serve_app(settings) as url:
        fresh_window()
        refused = httpx.get(url + "/metrics")
        assert refused.status_code == 401 and "MILLRACE_METRICS_TOKEN" in refused.json()["error"]["message"]
        assert httpx.get(url + "/metrics", headers=one).status_code == 401  # a user key is not the scrape token
        assert post(url, "/v1/search", {"query": "turbine", "k": 1}, headers=scraper).status_code == 401  # nor back
        assert [post(url, "/v1/search", {"query": "turbine", "k": 1}, headers=one).status_code
                for _ in range(3)] == [200, 200, 429]
        for _ in range(10):  # the key is past its limit: scrapes and probes still answer
            scrape = httpx.get(url + "/metrics", headers=scraper)
            assert scrape.status_code == 200 and "millrace_request_seconds" in scrape.text
            assert httpx.get(url + "/ready", headers=scraper).status_code == 200
            assert httpx.get(url + "/ready", headers=one).status_code == 200
        assert "scrape-secret" not in scrape.text
        limited = post(url, "/v1/search", {"query": "turbine", "k": 1}, headers=one)
        assert limited.status_code == 429 and "2 requests a minute" in limited.json()["error"]["message"]


def test_without_keys_a_scrape_does_not_spend_the_scrapers_address_quota(index):
    settings = index[0].model_copy(update={"rate_limit_per_min": 2})  # per client address: all of loopback here
    with serve_app(settings) as url:
        fresh_window()
        for _ in range(10):
            assert httpx.get(url + "/metrics").status_code == 200 and httpx.get(url + "/ready").status_code == 200
        assert [post(url, "/v1/search", {"query": "turbine", "k": 1}).status_code for _ in range(3)] == [200, 200, 429]


def test_keys_from_the_environment_split_on_commas(monkeypatch):
    monkeypatch.setenv("MILLRACE_API_KEYS", "alpha, beta")
    keys = ServeSettings().api_keys
    assert [k.get_secret_value() for k in keys] == ["alpha", "beta"] and "alpha" not in repr(keys)
    monkeypatch.setenv("MILLRACE_API_KEYS", json.dumps(["gamma"]))
    assert [k.get_secret_value() for k in ServeSettings().api_keys] == ["gamma"]
