"""The Milvus Helm values (deployments/k8s/milvus-values.yaml) against the chart's keys and the GPU index
parameters millrace.index.connect uses."""

from __future__ import annotations

import pytest
import yaml

from millrace.index.connect import GPU_INDEXES, _BUILD, _SEARCH
from tests.deployments.templates import MILVUS_VALUES, job_template, variable_defaults

pytestmark = pytest.mark.unit


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
