"""deployments/SCALING.md names only files, settings and deployments that exist."""

from __future__ import annotations

import re

import pytest
import yaml

from millrace.config import Settings
from tests.conftest import ROOT
from tests.deployments.templates import (DASK_CLUSTER, GUIDE, JOB_TEMPLATE, MILVUS_VALUES, job_template,
                                         variable_defaults)

pytestmark = pytest.mark.unit


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
