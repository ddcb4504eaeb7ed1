"""The core stays Prefect-free: millrace/ imports none of the orchestration layers above it, and millrace.* and the
serving module import without Prefect (serving reuses the core in processes that have no Prefect)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

CORE = ROOT / "millrace"
# The layers above the core (and the orchestration libraries they wrap).
FORBIDDEN = ("prefect", "prefect_dask", "flows", "tasks", "blocks")


def imports_in(text: str, package: str = "millrace", filename: str = "<text>") -> list[tuple[int, str]]:
    """Every module a source text imports, at module level or inside functions, with its line: `import a.b`,
    `from a import b` (as `a` and `a.b`), relative imports resolved against `package`, and
    importlib.import_module / __import__ calls with a literal name."""
    found = []
    for node in ast.walk(ast.parse(text, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}" if module else alias.name) for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.append((node.lineno, node.args[0].value))
    return found


def imports(path) -> list[tuple[int, str]]:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return imports_in(path.read_text(encoding="utf-8"), package, str(path))


def core_files():
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_import_scanner_sees_every_kind_of_import():
    text = ("import prefect.settings\nfrom flows.ingest import ingest\n"
            "def f():\n    from blocks import load_settings\n    import importlib\n"
            "    importlib.import_module('tasks.ingest')\n    from . import config\n    from .. import flows\n")
    found = {m for _, m in imports_in(text, "millrace")}
    assert {"prefect.settings", "flows.ingest", "blocks", "tasks.ingest", "millrace.config", "flows"} <= found
    assert {m for _, m in imports_in("from .. import flows\n", "millrace.sub")} >= {"millrace.flows"}


def test_the_core_imports_no_orchestration_layer():
    assert len(core_files()) > 10
    violations = [f"{p.relative_to(ROOT)}:{line} imports {module}"
                  for p in core_files() for line, module in imports(p)
                  if module.split(".")[0] in FORBIDDEN]
    assert not violations, "millrace/ must stay Prefect-free:\n" + "\n".join(violations)


def test_config_does_not_reach_up_into_blocks():
    found = [module for _, module in imports(CORE / "config.py")]
    assert not [m for m in found if m.split(".")[0] == "blocks"], found
    assert not [m for m in found if m.split(".")[0] in FORBIDDEN], found


def test_every_core_module_and_serving_import_without_prefect():
    """In a fresh interpreter: import every millrace.* and serving.* module (the API, the relay); Prefect must not be loaded."""
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in core_files()]
    modules = [m.removesuffix(".__init__") for m in modules] + ["serving"] + sorted(
        f"serving.{p.stem}" for p in (ROOT / "serving").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"importing the core failed, or loaded these:\n{done.stdout}{done.stderr[-3000:]}"
