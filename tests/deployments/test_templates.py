"""The scaling-out templates in deployments/ (issue 9), each checked against what it must fit: the Kubernetes work
pool's base job template against Prefect's own validation and rendering, the Dask resources against the
dask-kubernetes operator's CRD fields and the `dask worker` command line, the Milvus values against the chart's keys
and millrace.milvus_connect, the Dockerfile against pyproject.toml, constraints.txt and prefect.yaml. Nothing is
applied to a cluster here (there is none); see deployments/SCALING.md."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shlex
import tomllib
from typing import Any, Optional, Union

import jsonpatch
import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from prefect.utilities.templating import PlaceholderType, find_placeholders
from pydantic import Field, SecretStr

from millrace.config import Settings
from millrace.milvus_connect import _BUILD, _SEARCH, GPU_INDEXES, SERVER_INDEXES
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

DEPLOY = ROOT / "deployments"
JOB_TEMPLATE = DEPLOY / "k8s" / "base-job-template.json"
DASK_CLUSTER = DEPLOY / "k8s" / "dask-cluster.yaml"
MILVUS_VALUES = DEPLOY / "k8s" / "milvus-values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
GUIDE = DEPLOY / "SCALING.md"


def job_template() -> dict:
    return json.loads(JOB_TEMPLATE.read_text())


def variable_defaults(template: dict) -> dict:
    return {k: p["default"] for k, p in template["variables"]["properties"].items() if "default" in p}


def job_container(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def env_by_name(env: list[dict]) -> dict[str, dict]:
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in env}


def secret_settings() -> set[str]:
    """Settings that are credentials: the SecretStr fields, plus the ledger URL (it carries the database password)
    and the S3 key id that goes with the S3 secret."""
    typed = {name for name, f in Settings.model_fields.items() if f.annotation is SecretStr}
    return typed | {"ledger_url", "s3_key"}


def assert_settings_env(env: dict[str, dict], where: str) -> None:
    """Every MILLRACE_* variable names a real setting (a typo would be silently ignored: extra="ignore"), each entry
    has exactly one of value / valueFrom, and credentials only come from a Secret."""
    for name, entry in env.items():
        assert ("value" in entry) != ("valueFrom" in entry), f"{where}: {name} needs exactly one of value, valueFrom"
        if name.startswith("MILLRACE_"):
            assert name.removeprefix("MILLRACE_").lower() in Settings.model_fields, f"{where}: {name} is no setting"
    for setting in secret_settings():
        name = f"MILLRACE_{setting.upper()}"
        assert name in env, f"{where}: {name} missing"
        ref = env[name].get("valueFrom", {}).get("secretKeyRef")
        assert ref and ref.get("key") and ref.get("name"), f"{where}: {name} must come from a secretKeyRef"


# --- the Kubernetes work pool's base job template --------------------------------------------------------------

# The fields of prefect-kubernetes 0.8.0's KubernetesWorkerJobConfiguration (prefect_kubernetes/worker.py; `command`,
# `env`, `labels`, `name` come from prefect.workers.base.BaseJobConfiguration): the job configuration must fill
# exactly these, as the package's own default template (KubernetesWorker.get_default_base_job_template()) does.
K8S_JOB_CONFIGURATION_FIELDS = {"command", "env", "labels", "name", "annotations", "namespace", "job_manifest",
                                "cluster_config", "job_watch_timeout_seconds", "pod_watch_timeout_seconds",
                                "stream_output"}
# The manifest every job must contain, with these values: prefect_kubernetes.worker._get_base_job_manifest (0.8.0),
# checked by KubernetesWorkerJobConfiguration._validate_job_manifest with the same JSON-patch diff as below.
K8S_BASE_JOB_MANIFEST = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"annotations": {}, "labels": {}},
    "spec": {"template": {"spec": {"parallelism": 1, "completions": 1, "restartPolicy": "Never",
                                   "containers": [{"name": "prefect-job"}]}}},
}


def check_job_manifest(manifest: dict) -> None:
    """prefect-kubernetes' own rule: every path of the base manifest present, with the same value."""
    manifest = copy.deepcopy(manifest)
    manifest.setdefault("metadata", {}).setdefault("annotations", {})
    manifest["metadata"].setdefault("labels", {})
    patch = jsonpatch.JsonPatch.from_diff(manifest, K8S_BASE_JOB_MANIFEST)
    missing = sorted(op["path"] for op in patch if op["op"] == "add")
    wrong = sorted(f"{op['path']} must be {op['value']!r}" for op in patch if op["op"] == "replace")
    assert not missing, f"job manifest lacks {missing}"
    assert not wrong, f"job manifest has {wrong}"


def render(template: dict, values: dict[str, Any]) -> dict:
    """The job configuration a Kubernetes worker would build for a flow run: Prefect's own
    BaseJobConfiguration.from_template_and_values (defaults, deployment values, placeholder substitution, env
    merging) on a configuration class with KubernetesWorkerJobConfiguration's field types. The client is a stub
    that fails on any use: the template must render without the Prefect API (no block or variable references)."""
    from prefect.workers.base import BaseJobConfiguration

    class KubernetesLikeJobConfiguration(BaseJobConfiguration):
        annotations: dict[str, str] = Field(default_factory=dict)
        namespace: str = "default"
        job_manifest: dict[str, Any]
        cluster_config: Optional[dict[str, Any]] = None
        job_watch_timeout_seconds: Optional[int] = None
        pod_watch_timeout_seconds: int = 60
        stream_output: bool = True
        env: Union[dict[str, Optional[str]], list[dict[str, Any]]] = Field(default_factory=dict)

    class NoApi:
        pass

    config = asyncio.run(KubernetesLikeJobConfiguration.from_template_and_values(template, values, client=NoApi()))
    return config.model_dump()


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


# --- the Dask cluster for the dask-kubernetes operator ------------------------------------------------------------

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

    import millrace.warmup

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
        assert params["preload"] == ("millrace.warmup",), group
        assert params["scheduler"] is None, "the operator passes the scheduler in DASK_SCHEDULER_ADDRESS"
        # One thread per requested core: a batch encodes on all of the worker's threads.
        assert params["nthreads"] == int(container["resources"]["requests"]["cpu"]), group
    assert callable(millrace.warmup.dask_setup), "Dask's preload hook"


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


# --- Milvus Helm values ---------------------------------------------------------------------------------------------

# Keys of zilliztech/milvus-helm chart 4.2.58's values.yaml (charts/milvus/values.yaml at that release) that these
# values may set: a misspelt key would be ignored by Helm without a word.
MILVUS_CHART_KEYS = {
    "cluster": {"enabled"},
    "image": {"all", "tools"},
    "service": {"type", "port", "portName", "nodePort", "annotations", "labels", "externalIPs",
                "loadBalancerSourceRanges"},
    "extraConfigFiles": {"user.yaml"},
    "queryNode": {"enabled", "replicas", "resources", "runtimeClassName", "nodeSelector", "affinity", "tolerations",
                  "securityContext", "containerSecurityContext", "topologySpreadConstraints", "extraEnv",
                  "heaptrack", "disk", "profiling", "strategy", "annotations", "hpa"},
    "indexNode": {"enabled", "replicas", "resources", "runtimeClassName", "nodeSelector", "affinity", "tolerations",
                  "securityContext", "containerSecurityContext", "topologySpreadConstraints", "extraEnv",
                  "heaptrack", "disk", "profiling", "strategy", "annotations", "hpa"},
}


def milvus_values() -> dict:
    return yaml.safe_load(MILVUS_VALUES.read_text())


def test_milvus_values_gpu_cagra_params_are_the_ones_millrace_uses():
    index = milvus_values()["millrace"]
    assert index["index_type"] == "GPU_CAGRA" and "GPU_CAGRA" in GPU_INDEXES
    assert index["build_params"] == _BUILD["GPU_CAGRA"]
    assert index["search_params"] == _SEARCH["GPU_CAGRA"]
    defaults = variable_defaults(job_template())
    assert (defaults["milvus_index"], defaults["milvus_metric"]) == (index["index_type"], index["metric_type"])
    assert index["metric_type"] in {"L2", "IP"}, "Milvus's GPU indexes accept L2 and IP only"


def test_milvus_values_are_a_gpu_cluster():
    values = milvus_values()
    for key, sub in values.items():
        if key != "millrace":
            assert key in MILVUS_CHART_KEYS and set(sub) <= MILVUS_CHART_KEYS[key], key
    assert values["cluster"]["enabled"] is True
    assert values["image"]["all"]["repository"] == "milvusdb/milvus"
    assert values["image"]["all"]["tag"].endswith("-gpu")
    for node in ("queryNode", "indexNode"):
        assert values[node].get("enabled", True), node
        resources = values[node]["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1, node
        # Kubernetes wants an extended resource's request, when given, equal to its limit.
        assert resources.get("requests", {}).get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"]) \
            == resources["limits"]["nvidia.com/gpu"], node
    config = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    assert config["common"]["security"]["authorizationEnabled"] is True
    # The URI the templates use is this release's proxy Service.
    uri = variable_defaults(job_template())["milvus_uri"]
    assert uri == f"http://milvus.millrace.svc.cluster.local:{values['service']['port']}"


# --- the image ------------------------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comment lines dropped, as Docker reads them."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined, current = [], ""
    for line in lines:
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            joined.append(current.strip())
        current = ""
    return [(i.split(None, 1)[0].upper(), i.split(None, 1)[1] if " " in i else "") for i in joined]


def test_dockerfile_installs_torch_first_then_the_constraints_then_tika():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert torch_pin in (ROOT / "constraints.txt").read_text().splitlines()
    steps = dockerfile_instructions()
    kinds = [k for k, _ in steps]
    base = steps[0][1]
    assert steps[0][0] == "FROM" and re.match(r"python:3\.11-slim", base), base
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains("3.11"), "the image's Python"
    runs = [(i, args) for i, (kind, args) in enumerate(steps) if kind == "RUN"]
    java = next(i for i, a in runs if "openjdk-17-jre" in a)
    torch = next(i for i, a in runs if torch_pin in shlex.split(a))
    install = next(i for i, a in runs if "-c constraints.txt" in a)
    tika = next(i for i, a in runs if "millrace setup-tika" in a)
    assert java < install and torch < install < tika
    assert "-e ." in steps[install][1] and "torch" not in steps[install][1], "torch is installed on its own, first"
    copied = " ".join(args for kind, args in steps[:install] if kind == "COPY")
    assert "constraints.txt" in copied and "pyproject.toml" in copied
    for package in pyproject["tool"]["setuptools"]["packages"]:
        assert re.search(rf"(^|\s){package}(\s|$)", copied), f"package {package} not copied before the install"
    env = " ".join(args for kind, args in steps if kind == "ENV")
    assert re.search(r"(^|\s)HF_HUB_OFFLINE=1(\s|$)", env)
    assert "ENTRYPOINT" not in kinds, "Kubernetes args must run as given"


def test_dockerfile_puts_the_flows_where_prefect_yaml_pulls_them_from():
    steps = dockerfile_instructions()
    workdir = [args for kind, args in steps if kind == "WORKDIR"][-1]
    env = " ".join(args for kind, args in steps if kind == "ENV")
    assert re.search(rf"(^|\s)MILLRACE_REPO={re.escape(workdir)}(\s|$)", env)
    pull = yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]
    step = pull[0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == "{{ $MILLRACE_REPO }}"


# --- the guide ------------------------------------------------------------------------------------------------------

def test_scaling_guide_uses_these_files_and_names():
    guide = GUIDE.read_text()
    for path in re.findall(r"(?<![\w/])deployments/[\w./-]+", guide):
        assert (ROOT / path.rstrip(".")).exists(), path
    assert ("prefect work-pool create millrace-k8s --type kubernetes "
            "--base-job-template deployments/k8s/base-job-template.json") in guide
    image = variable_defaults(job_template())["image"]
    assert f"docker build -f deployments/Dockerfile -t {image} ." in guide
    chart = re.search(r"chart (\d+\.\d+\.\d+)", MILVUS_VALUES.read_text()).group(1)
    assert "-n millrace -f deployments/k8s/milvus-values.yaml" in guide and f"--version {chart}" in guide
    for name in set(re.findall(r"MILLRACE_[A-Z0-9_]+", guide)) - {"MILLRACE_REPO"}:
        assert name.removeprefix("MILLRACE_").lower() in Settings.model_fields, name
    deployments = {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    for name in re.findall(r"prefect --no-prompt deploy -n ([\w-]+)", guide):
        assert name in deployments, f"SCALING.md deploys {name!r}, which prefect.yaml does not define"
    assert DASK_CLUSTER.name in guide and JOB_TEMPLATE.name in guide
