"""prefect.yaml's drain trigger, against the real Prefect API: the relay's wake-up event starts one run of the drain
deployment for the collection it names."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
import yaml

from intake.emit import PrefectEmitter

pytestmark = pytest.mark.integration


# How the drain deployment's trigger in prefect.yaml turns the relay's wake-up into a run for its collection:
# proved against the real Prefect API, with the very event the relay emits (intake.emit.wake_event).


def trigger_yaml() -> str:
    """The trigger exactly as prefect.yaml declares it for the drain deployment."""
    deployments = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())["deployments"]
    [drain] = [d for d in deployments if d["name"] == "drain"]
    return yaml.safe_dump({"triggers": drain["triggers"]})


def drain_signature(collection: str | None = None, options: dict | None = None) -> None:
    """The signature of flows/drain.py's flow: its schema makes the server check the parameters' types."""


async def _prove(prefect_api: str, collection: str) -> list[dict]:
    from prefect import flow
    from prefect.cli.deploy._triggers import _create_deployment_triggers, _initialize_deployment_triggers
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.utilities.callables import parameter_schema

    from intake.emit import wake_event

    proof = flow(name=f"relay-proof-{uuid.uuid4().hex[:6]}")(drain_signature)
    schema = parameter_schema(drain_signature).model_dump_for_openapi()
    async with get_client() as client:
        flow_id = await client.create_flow(proof)
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=f"d-{uuid.uuid4().hex[:6]}", entrypoint="flows.drain:drain",
            parameter_openapi_schema=schema, enforce_parameter_schema=True)
        triggers = _initialize_deployment_triggers("drain", yaml.safe_load(trigger_yaml())["triggers"])
        await _create_deployment_triggers(client, deployment_id, triggers)
        await asyncio.sleep(6)  # the triggers service picks up new automations within a few seconds
        emitter = PrefectEmitter(prefect_api)
        try:
            await asyncio.to_thread(emitter.emit, [wake_event(collection, 3)])
        finally:
            emitter.close()
        runs: list = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not runs:
            await asyncio.sleep(1)
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        await client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
        await client.delete_deployment(deployment_id)
        return [run.parameters for run in runs]


def test_the_drain_trigger_starts_a_run_for_the_woken_collection(prefect_api):
    collection = f"Proof Collection é #{uuid.uuid4().hex[:4]}"
    parameters = asyncio.run(_prove(prefect_api, collection))
    assert parameters == [{"collection": collection}], "the wake-up did not start exactly one run for its collection"
