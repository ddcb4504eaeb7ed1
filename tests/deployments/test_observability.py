"""The Grafana dashboard and the Prometheus alert rules: their structure, and that every metric their expressions
name is exposed for real, by the serving app's /metrics and by the `millrace metrics` exporter, after a real ingest
and real requests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port, wait_port

OBS = ROOT / "deployments" / "observability"
METRIC = re.compile(r"\bmillrace_[a-z0-9_]+\b")


def dashboard() -> dict:
    return json.loads((OBS / "grafana-dashboard.json").read_text())


def rules() -> list[dict]:
    return [r for g in yaml.safe_load((OBS / "alert-rules.yaml").read_text())["groups"] for r in g["rules"]]


def exprs() -> list[str]:
    panels = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    variables = [v["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    return panels + variables + [r["expr"] for r in rules()]


@pytest.mark.unit
def test_the_dashboard_is_a_grafana_dashboard_on_a_datasource_variable():
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 30
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p["targets"]:
            assert t["refId"] and METRIC.search(t["expr"]), (p["title"], t)
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for topic in ("request latency", "stage latency", "errors", "cache hit", "failing documents", "freshness",
                  "index age", "seconds per document"):
        assert topic in titles, topic


@pytest.mark.unit
def test_the_alert_rules_are_prometheus_rule_groups_with_the_search_p99_alert():
    for rule in rules():
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule.get("alert")
        assert re.fullmatch(r"\d+[smh]", rule["for"]) and rule["labels"]["severity"] in ("page", "warn")
        assert rule["annotations"]["summary"] and METRIC.search(rule["expr"])
    by_name = {r["alert"]: r for r in rules()}
    p99 = by_name["MillraceSearchLatencyHigh"]
    assert p99["for"] == "5m" and p99["expr"].replace(" ", "").startswith(
        'histogram_quantile(0.99,sumby(le)(rate(millrace_request_seconds_bucket{route="/v1/search"}')
    assert p99["expr"].endswith("> 0.5")
    assert {"MillraceServer5xxRate", "MillraceIndexStale", "MillraceFailuresSpike"} <= set(by_name)


def scraped_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.integration
def test_every_metric_the_dashboard_and_alerts_use_is_exposed_after_a_real_ingest(tmp_path):
    from millrace.sources.samples import write_samples
    from serving.config import ServeSettings
    from tests.serving.harness import ingest_into, serve_app

    settings = ServeSettings(home=tmp_path / "home", collection=f"o_{uuid.uuid4().hex[:8]}", retry_delays=[0.2])
    summary = ingest_into(write_samples(tmp_path / "docs")[0].parent, settings)
    assert summary["failed"] > 0  # the samples hold an empty and a textless file: failures by reason are exposed

    with serve_app(settings) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.post("/v1/search", json={"query": "paid leave", "k": 3}).status_code == 200
            assert http.post("/v1/search", json={"query": "paid leave", "k": 3}).json()["cached"]
            assert http.post("/v1/search", json={"query": ""}).status_code == 422
            serving = scraped_names(http.get("/metrics").text)

    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "millrace.cli", "metrics", "--home", str(settings.home),
                                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, 60)
        ingestion = scraped_names(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text)
    finally:
        exporter.terminate()
        exporter.wait(10)

    used = {name for e in exprs() for name in METRIC.findall(e)}
    assert used - serving == set(), "used by the dashboard/alerts but not on the serving app's /metrics"
    ingest_used = {n for n in used if n.startswith("millrace_ingest_")}
    assert ingest_used and ingest_used - ingestion == set(), "not on the exporter's /metrics"
