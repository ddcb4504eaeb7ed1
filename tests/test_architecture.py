"""The layers hold: the import-linter contracts in pyproject.toml (which `make test` also runs as `lint-imports`) are
kept, and they do break when a module imports against them; and the core, the API and the relay import without
loading Prefect at run time, which a static contract cannot see (a library of theirs could import it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("millrace", "intake", "serving", "blocks", "tasks", "flows")


def lint(cwd: Path, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([str(LINT), "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_import_contracts_are_kept():
    done = lint(ROOT, str(ROOT))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("importer, line, broken", [
    ("millrace/documents/chunk.py", "from millrace.platform import warmup", "The core's layers"),
    ("millrace/index/store.py", "from millrace import clients", "The core's layers"),
    ("millrace/ledger/book.py", "from millrace.index import versions", "The core's layers"),
    ("millrace/config.py", "import prefect", "Prefect-free"),
    ("intake/relay.py", "import prefect_dask", "Prefect-free"),
    ("millrace/retry.py", "from flows import ingest", "nothing imports upwards"),
    ("serving/routes.py", "import blocks", "nothing imports upwards"),
    ("flows/options.py", "from flows import cli", "No import cycles"),
    ("millrace/documents/tika_server.py", "from millrace.documents import extractors", "No import cycles"),
])
def test_a_module_that_imports_against_the_layers_breaks_a_contract(tmp_path, importer, line, broken):
    """The same contracts on a copy of the tree with one import added against them."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / importer
    target.write_text(target.read_text(encoding="utf-8") + f"\n\ndef _against():\n    {line}\n", encoding="utf-8")
    done = lint(tmp_path, str(tmp_path))
    assert done.returncode != 0, done.stdout[-3000:]
    broken_section = done.stdout.split("Broken contracts", 1)[-1]
    assert broken in broken_section.replace("\n", " "), done.stdout[-3000:]


def test_every_core_module_and_the_api_and_relay_import_without_prefect():
    """In a fresh interpreter: import every millrace.*, serving.* and intake.* module; Prefect must not be loaded."""
    modules = []
    for package in ("millrace", "serving", "intake"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            if "__pycache__" not in path.parts and not name.endswith("__main__"):
                modules.append(name)
    assert len(modules) > 60
    forbidden = ("prefect", "prefect_dask", "flows", "tasks", "blocks")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"importing the core failed, or loaded these:\n{done.stdout}{done.stderr[-3000:]}"
