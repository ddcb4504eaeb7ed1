"""The Kubernetes work pool's base job template (deployments/k8s/base-job-template.json) against
Prefect's own validation and rendering: its variables, placeholders, fields, and the job it renders."""

from __future__ import annotations

import re

import jsonschema
import pytest
from prefect.utilities.templating import PlaceholderType, find_placeholders

from millrace.index.connect import GPU_INDEXES, SERVER_INDEXES
from tests.deployments.templates import (JOB_TEMPLATE, K8S_JOB_CONFIGURATION_FIELDS, assert_settings_env,
                                         check_job_manifest, env_by_name, job_container, job_template, render,
                                         variable_defaults)

pytestmark = pytest.mark.unit


def test_job_template_variables_are_a_valid_json_schema_and_the_defaults_fit_it():
    variables = job_template()["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    jsonschema.Draft7Validator.check_schema(variables)
    defaults = variable_defaults(job_template())
    jsonschema.Draft202012Validator(variables).validate(defaults)
    # The endpoint variables are plain strings that end up as env values.
    for name in ("dask_address", "milvus_uri", "milvus_index", "milvus_metric", "tika_endpoint", "secret_name"):
        assert variables["properties"][name]["type"] == "string"


def test_job_template_placeholders_are_exactly_the_declared_variables():
    from prefect.server.schemas.actions import WorkPoolCreate, validate_base_job_template

    template = job_template()
    # What the Prefect server runs on `prefect work-pool create ... --base-job-template` (raises on a placeholder
    # that is not a declared variable), and the request model it runs in.
    validate_base_job_template(template)
    WorkPoolCreate(name="millrace-k8s", type="kubernetes", base_job_template=template)
    placeholders = find_placeholders(template["job_configuration"])
    # Only plain variables: block and Prefect-variable references would need the API at render time, and a
    # `{{ $ENV }}` would read the worker's environment, not the flow run's.
    assert {p.type for p in placeholders} == {PlaceholderType.STANDARD}
    used = {p.name for p in placeholders}
    declared = set(template["variables"]["properties"])
    assert used == declared, f"undeclared: {used - declared}, never used: {declared - used}"


def test_job_template_has_the_kubernetes_worker_fields_and_a_batch_v1_job():
    template = job_template()
    assert set(template["job_configuration"]) == K8S_JOB_CONFIGURATION_FIELDS
    manifest = template["job_configuration"]["job_manifest"]
    # (The full manifest rule applies once rendered: annotations and labels are still placeholders here.)
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    pod = manifest["spec"]["template"]["spec"]
    assert (pod["restartPolicy"], pod["parallelism"], pod["completions"]) == ("Never", 1, 1)
    assert pod["containers"][0]["name"] == "prefect-job"
    # The worker fills these from the run (name, labels, namespace) and runs the flow through `args`.
    container = job_container(manifest)
    assert container["args"] == "{{ command }}" and container["image"] == "{{ image }}"
    assert template["job_configuration"]["env"] == "{{ env }}"
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}


def test_job_template_renders_a_complete_job_with_millrace_settings_and_secrets_by_reference():
    template = job_template()
    defaults = variable_defaults(template)
    config = render(template, {})
    manifest = config["job_manifest"]
    check_job_manifest(manifest)
    assert not find_placeholders(manifest), "placeholders left after rendering"
    assert config["namespace"] == manifest["metadata"]["namespace"] == "millrace"
    container = job_container(manifest)
    assert container["image"] == defaults["image"]
    # Every resource quantity is set: a null quantity is not one.
    for kind in ("requests", "limits"):
        assert all(isinstance(v, str) and v for v in container["resources"][kind].values()), container["resources"]
    env = env_by_name(container["env"])
    assert_settings_env(env, "base job template")
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    for setting, variable in [("DASK_ADDRESS", "dask_address"), ("MILVUS_URI", "milvus_uri"),
                              ("MILVUS_INDEX", "milvus_index"), ("MILVUS_METRIC", "milvus_metric"),
                              ("TIKA_ENDPOINT", "tika_endpoint")]:
        assert env[f"MILLRACE_{setting}"]["value"] == defaults[variable]
    for entry in env.values():
        if "valueFrom" in entry:
            assert entry["valueFrom"]["secretKeyRef"]["name"] == defaults["secret_name"]
    # The ledger is required (an SQLite ledger would die with the pod); the other credentials are optional.
    assert not env["MILLRACE_LEDGER_URL"]["valueFrom"]["secretKeyRef"].get("optional", False)
    assert env["MILLRACE_MILVUS_URI"]["value"].startswith("http://"), "a Milvus Lite file would die with the pod"

    # A deployment's job variables override the pool's, and its env merges with the pool's.
    config = render(template, {"milvus_index": "HNSW", "env": {"MILLRACE_COLLECTION": "docs"}})
    assert env_by_name(job_container(config["job_manifest"])["env"])["MILLRACE_MILVUS_INDEX"]["value"] == "HNSW"
    assert config["env"] == {"MILLRACE_COLLECTION": "docs"}


def test_job_template_holds_no_credential():
    text = JOB_TEMPLATE.read_text()
    assert not re.search(r"://[^/\s\"'@]+:[^/\s\"'@]+@", text), "a URL with a password"
    assert "root:Milvus" not in text and "AKIA" not in text
    env = job_container(job_template()["job_configuration"]["job_manifest"])["env"]
    for entry in env:
        if re.search(r"TOKEN|SECRET|PASSWORD|LEDGER_URL|_KEY$", entry["name"]):
            assert "value" not in entry, f"{entry['name']} given literally"


def test_job_template_index_choices_are_millraces():
    props = job_template()["variables"]["properties"]
    assert set(props["milvus_index"]["enum"]) == SERVER_INDEXES
    defaults = variable_defaults(job_template())
    assert defaults["milvus_index"] in SERVER_INDEXES
    if defaults["milvus_index"] in GPU_INDEXES:
        # Milvus's GPU indexes accept L2 and IP only (milvus-io/milvus-sdk-go#836, zilliztech/VectorDBBench#325).
        assert defaults["milvus_metric"] in {"L2", "IP"}
