"""Both notebooks run top to bottom, so they never rot; their outputs are not kept."""

import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def execute(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def outputs(nb) -> str:
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))


def test_explore_collection_notebook_on_a_tiny_collection(sample_dir, settings, monkeypatch):
    monkeypatch.setenv("MILLRACE_COLLECTION", settings.collection)
    # In its own process: Milvus Lite admits one process per file, and the notebook's kernel must open it next.
    done = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(sample_dir)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    monkeypatch.setenv("MILLRACE_NB_QUERIES", "paid leave for new employees")
    text = outputs(execute("explore_collection.ipynb"))
    assert f"collection {settings.collection!r}: 9 documents" in text
    assert "employee-handbook.pdf p.2" in text  # the sample search, cited with its page
    assert "no_text" in text and "empty" in text  # the two bad samples, with their reasons


def test_results_notebook_plots_the_committed_results():
    nb = execute("results.ipynb")
    text = outputs(nb)
    assert "result files in" in text and "ndcg@10" in text and "efficiency" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3
