"""What the template tests share (tests/deployments/test_{job_template,dask_cluster,milvus_values,dockerfile,
scaling_guide}.py): the files, Millrace's settings as env entries, and the job a Kubernetes worker would render.
Nothing is applied to a cluster here (there is none); see deployments/SCALING.md."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any, Optional, Union

import jsonpatch
from pydantic import Field, SecretStr

from millrace.config import Settings
from tests.conftest import ROOT


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
