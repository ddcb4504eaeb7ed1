"""`make server`: the local platform starts, deploys prefect.yaml, and a deployment run lands in its Milvus."""

from __future__ import annotations

import re
import socket
import stat

import pytest

from millrace.platform import control as mp


@pytest.mark.unit
def test_a_taken_port_is_refused_by_name_before_anything_starts(tmp_path, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("MILLRACE_RELAY_PORT", str(port))
        with pytest.raises(mp.PlatformError, match=rf"MILLRACE_RELAY_PORT={port} \(relay\)"):
            mp.start(tmp_path / "home", say=lambda _: None)
    assert not (tmp_path / "home" / "platform.pid").exists()


@pytest.mark.unit
def test_the_relay_token_is_made_once_and_readable_only_by_its_owner(tmp_path, monkeypatch):
    monkeypatch.delenv("MILLRACE_RELAY_TOKEN", raising=False)
    first = mp.relay_token(tmp_path)
    assert len(first) >= 32 and mp.relay_token(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "relay.token").stat().st_mode) == 0o600


@pytest.mark.unit
def test_the_export_lines_survive_a_home_with_spaces(tmp_path):
    ep = mp.layout(tmp_path / "my home", {"MILLRACE_PREFECT_PORT": "4300"})
    assert f"export MILLRACE_HOME='{tmp_path}/my home'" in ep.exports()
    assert "export PREFECT_API_URL=http://127.0.0.1:4300/api" in ep.exports()
    assert ep.ports["milvus"] == 19530 and ep.dask_workers >= 1


@pytest.mark.slow
@pytest.mark.integration
def test_every_service_is_up_and_prefect_yaml_is_deployed(platform):
    assert mp.status(platform.ep.home) == {name: "ok" for name in mp.probes(platform.ep)}
    assert {"ingest/backfill", "sync/sync", "drain/drain"} <= set(platform.ep.deployments)
    workers = platform.api.post(f"/work_pools/{mp.POOL}/workers/filter", json={}).json()
    assert [w["status"] for w in workers] == ["ONLINE"]
    import distributed

    # Dask's statistical profiler grows a standing worker for its first 17 minutes (deployments/Procfile).
    with distributed.Client(platform.ep.dask_address, timeout=30) as client:
        profiling = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
    assert profiling and not any(profiling.values()), profiling


@pytest.mark.slow
@pytest.mark.integration
def test_backfill_runs_on_the_process_worker_and_its_documents_are_searchable(platform, backfill):
    from millrace.config import load_settings
    from millrace.search import Retriever

    artifacts = platform.artifacts(backfill["id"])
    # The summary's key names the collection (the physical one behind the alias, e.g. ingest-backfill-docs--v1).
    summaries = [key for key in artifacts if key.startswith("ingest-backfill-docs")]
    assert len(summaries) == 1 and "quality-gates" in artifacts, sorted(artifacts)
    summary = artifacts[summaries[0]]["data"]
    assert "Milvus holds" in summary and ": OK." in summary, summary
    assert int(re.search(r"\| indexed \| (\d+) \|", summary).group(1)) >= 5, summary
    assert backfill["parameters"]["source"] == str(backfill["samples"])
    # Through the platform's Milvus server, as a serving process would search it.
    settings = load_settings(home=platform.ep.home, milvus_uri=platform.ep.milvus_uri, collection="backfill_docs",
                             search_consistency="Strong")
    hits = Retriever(settings).search("How many days of paid leave do new employees get?", k=3)
    assert hits and hits[0].source_uri.endswith("employee-handbook.pdf"), [h.source_uri for h in hits]
    assert "27 days" in hits[0].text
