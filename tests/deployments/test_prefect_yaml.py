import inspect
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_every_deployment_points_at_a_flow_with_matching_parameters(monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert {d["name"] for d in spec["deployments"]} == {"nightly", "on-demand", "retrieval-gate"}
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert flow.name == ("evaluate" if deployment["name"] == "retrieval-gate" else "ingest") and flow.description
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment["parameters"]) <= accepted, deployment["name"]
        assert deployment["work_pool"]["name"] == "millrace"
