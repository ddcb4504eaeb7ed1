"""prefect.yaml: every deployment points at a flow whose parameters it knows, with forms the UI can render."""

import inspect
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"backfill": "ingest", "sync": "sync", "drain": "drain", "watch": "watch", "rebuild": "rebuild",
            "rollback": "rollback", "evaluate": "evaluate"}


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_every_deployment_points_at_a_flow_with_described_parameters(spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert {d["name"]: d["entrypoint"] for d in spec["deployments"]}.keys() == EXPECTED.keys()
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert flow.name == EXPECTED[deployment["name"]] and flow.description and deployment["description"]
        assert "\n" not in flow.description.strip(), f"{flow.name}: the UI shows a one-line docstring"
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters") or {}) <= accepted, deployment["name"]
        assert deployment["work_pool"]["name"] == "millrace"
        # Every parameter has a description, so the run form in the UI explains itself.
        props = flow.parameters.model_dump()["properties"]
        assert all(p.get("description") for p in props.values()), (flow.name, props)


def test_wake_ups_start_one_drain_at_a_time_and_a_sweep_catches_lost_ones(spec):
    [drain] = [d for d in spec["deployments"] if d["name"] == "drain"]
    [trigger] = drain["triggers"]
    assert trigger["expect"] == ["millrace.changes.pending"]
    assert trigger["match"]["prefect.resource.id"] == "millrace.collection.*"
    assert trigger["parameters"] == {"collection": "{{ event.payload.collection }}"}
    assert drain["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert [(s["interval"], s["active"]) for s in drain["schedules"]] == [(60, True)]


def test_scheduled_sync_is_off_until_switched_on(spec):
    [sync] = [d for d in spec["deployments"] if d["name"] == "sync"]
    assert sync["schedules"] and all(s["active"] is False for s in sync["schedules"])
