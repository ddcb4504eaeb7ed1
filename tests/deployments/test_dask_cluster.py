"""The Dask resources for the dask-kubernetes operator (deployments/k8s/dask-cluster.yaml) against the
operator's CRD fields and the `dask worker` command line; workers share the flow runs' settings and image."""

from __future__ import annotations

import re

import jsonschema
import pytest
import yaml

from tests.deployments.templates import (DASK_CLUSTER, assert_settings_env, env_by_name, job_template, render,
                                         variable_defaults)

pytestmark = pytest.mark.unit


# The CRD fields the operator requires (dask/dask-kubernetes: dask_kubernetes/operator/customresources/templates.yaml
# and daskworkergroup.yaml), with the required fields of the Kubernetes PodSpec / Container / ServicePort they embed.
_POD_SPEC = {"type": "object", "required": ["containers"], "properties": {"containers": {
    "type": "array", "minItems": 1, "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "image": {"type": "string"},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "array", "items": {"type": "object", "required": ["name"]}}}}}}}
_SERVICE_SPEC = {"type": "object", "properties": {"ports": {"type": "array", "items": {
    "type": "object", "required": ["port"]}}, "selector": {"type": "object"}}}
_DASK_WORKER = {"type": "object", "required": ["spec"], "properties": {"replicas": {"type": "integer"},
                                                                         "spec": _POD_SPEC}}
DASK_CRDS = {
    "DaskCluster": {"type": "object", "required": ["spec"], "properties": {"spec": {
        "type": "object", "required": ["scheduler", "worker"], "properties": {
            "idleTimeout": {"type": "integer"},
            "scheduler": {"type": "object", "required": ["spec", "service"],
                          "properties": {"spec": _POD_SPEC, "service": _SERVICE_SPEC}},
            "worker": _DASK_WORKER}}}},
    "DaskWorkerGroup": {"type": "object", "required": ["spec"], "properties": {"spec": {
        "type": "object", "required": ["cluster", "worker"],
        "properties": {"cluster": {"type": "string"}, "worker": _DASK_WORKER}}}},
}
# dask_kubernetes.constants.VALID_CLUSTER_NAME: a DNS label that leaves room for the "-scheduler" suffix.
VALID_CLUSTER_NAME = re.compile(r"^(?=.{,53}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def dask_documents() -> tuple[dict, list[dict]]:
    docs = [d for d in yaml.safe_load_all(DASK_CLUSTER.read_text()) if d is not None]
    clusters = [d for d in docs if d["kind"] == "DaskCluster"]
    assert len(clusters) == 1
    return clusters[0], [d for d in docs if d["kind"] == "DaskWorkerGroup"]


def worker_groups() -> dict[str, dict]:
    """Each worker pod spec by the worker group's name (the operator names the cluster's own "<name>-default")."""
    cluster, groups = dask_documents()
    found = {f"{cluster['metadata']['name']}-default": cluster["spec"]["worker"]}
    found |= {g["metadata"]["name"]: g["spec"]["worker"] for g in groups}
    return found


def test_dask_documents_fit_the_operator_crds():
    docs = [d for d in yaml.safe_load_all(DASK_CLUSTER.read_text()) if d is not None]
    assert {d["kind"] for d in docs} == {"DaskCluster", "DaskWorkerGroup"}
    for doc in docs:
        assert doc["apiVersion"] == "kubernetes.dask.org/v1"
        assert doc["metadata"]["namespace"] == "millrace"
        jsonschema.Draft202012Validator(DASK_CRDS[doc["kind"]]).validate(doc)
    cluster, groups = dask_documents()
    assert VALID_CLUSTER_NAME.match(cluster["metadata"]["name"])
    for group in groups:
        assert group["spec"]["cluster"] == cluster["metadata"]["name"]


def test_dask_scheduler_service_is_the_address_flow_runs_use():
    cluster, _ = dask_documents()
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    scheduler = cluster["spec"]["scheduler"]
    # The operator creates the Service as given: its selector must match the labels it puts on the scheduler pod.
    assert scheduler["service"]["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    ports = {p["name"]: p for p in scheduler["service"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in scheduler["spec"]["containers"][0]["ports"]}
    assert (ports["tcp-comm"]["port"], container_ports[ports["tcp-comm"]["targetPort"]]) == (8786, 8786)
    assert (ports["http-dashboard"]["port"], container_ports[ports["http-dashboard"]["targetPort"]]) == (8787, 8787)
    # The Service is "<name>-scheduler" (dask_kubernetes.constants.SCHEDULER_NAME_TEMPLATE); the operator gives its
    # own workers this address (controller.build_worker_deployment_spec), and so must the work pool.
    address = f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:8786"
    defaults = variable_defaults(job_template())
    assert defaults["dask_address"] == address
    assert defaults["namespace"] == namespace


def test_dask_processes_parse_as_dask_commands_and_workers_preload_the_warmup():
    from distributed.cli import dask_scheduler, dask_worker

    import millrace.platform.warmup

    cluster, _ = dask_documents()
    args = cluster["spec"]["scheduler"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["dask", "scheduler"]
    params = dask_scheduler.main.make_context("dask scheduler", args[2:]).params
    assert (str(params["port"]), params["dashboard_address"]) == ("8786", ":8787")
    for group, worker in worker_groups().items():
        container = worker["spec"]["containers"][0]
        assert container["args"][:2] == ["dask", "worker"], group
        # Click parses the real `dask worker` options (an unknown or misspelt one fails here); its --preload
        # callback imports the module, as the worker will.
        params = dask_worker.main.make_context("dask worker", container["args"][2:]).params
        assert params["preload"] == ("millrace.platform.warmup",), group
        assert params["scheduler"] is None, "the operator passes the scheduler in DASK_SCHEDULER_ADDRESS"
        # One thread per requested core: a batch encodes on all of the worker's threads.
        assert params["nthreads"] == int(container["resources"]["requests"]["cpu"]), group
    assert callable(millrace.platform.warmup.dask_setup), "Dask's preload hook"


def test_dask_workers_share_the_flow_runs_settings_and_image():
    template = job_template()
    defaults = variable_defaults(template)
    job_env = env_by_name(render(template, {})["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["env"])
    cluster, _ = dask_documents()
    images = {c["image"] for c in cluster["spec"]["scheduler"]["spec"]["containers"]}
    for group, worker in worker_groups().items():
        container = worker["spec"]["containers"][0]
        images.add(container["image"])
        env = env_by_name(container["env"])
        assert_settings_env(env, group)
        assert env["HF_HUB_OFFLINE"]["value"] == "1"
        assert "PREFECT_API_URL" in env, "task runs on workers report to the Prefect API"
        shared = (set(env) & set(job_env)) - {"MILLRACE_DEVICE"}
        assert shared >= {n for n in job_env if n.startswith("MILLRACE_")} - {"MILLRACE_DASK_ADDRESS"}, group
        for name in shared:
            assert env[name] == job_env[name], f"{group}: {name} differs from the flow run's"
        gpus = int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
        assert env["MILLRACE_DEVICE"]["value"] == ("cuda" if gpus else "cpu"), group
    assert images == {defaults["image"]}, "one image for flow runs, scheduler and workers"
    assert any(int(w["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
               for w in worker_groups().values()), "a GPU worker group"
