"""prefect.yaml: every deployment points at a flow whose parameters it knows, with forms the UI can render."""

import inspect
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"backfill": "ingest", "sync": "sync", "s3-object": "s3-object", "rebuild": "rebuild",
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


def test_the_s3_trigger_passes_the_batch_as_lists(spec):
    [s3] = [d for d in spec["deployments"] if d["name"] == "s3-object"]
    [trigger] = s3["triggers"]
    assert trigger["expect"] == ["s3.objects.changed"] and trigger["match"]["prefect.resource.id"] == "s3.bucket.*"
    # Exactly one {{ expression }}, nothing around it: Prefect then keeps the list a list (see test_relay.py).
    for name in ("created", "removed"):
        assert trigger["parameters"][name] == f"{{{{ event.payload.{name} }}}}"


def test_scheduled_sync_is_off_until_switched_on(spec):
    [sync] = [d for d in spec["deployments"] if d["name"] == "sync"]
    assert sync["schedules"] and all(s["active"] is False for s in sync["schedules"])
