"""The image (deployments/Dockerfile) against pyproject.toml, constraints.txt and prefect.yaml."""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from tests.conftest import ROOT
from tests.deployments.templates import DOCKERFILE

pytestmark = pytest.mark.unit


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
    top_level = [p for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"] if "." not in p]
    assert len(top_level) >= 6, top_level
    for package in top_level:
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
