"""`make demo` as a new user first runs it: no Prefect API configured, no ~/.prefect, an empty MILLRACE_HOME."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.api import STARTING

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_demo_works_on_the_first_try_on_a_fresh_machine(tmp_path):
    user, home = tmp_path / "user", tmp_path / "millrace"
    user.mkdir()
    # No PREFECT_* (the session's harness exports PREFECT_API_URL) and no MILLRACE_*: what a new user's shell has.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MILLRACE_"))}
    env.update(HOME=str(user), MILLRACE_HOME=str(home))
    done = subprocess.run([sys.executable, "-m", "flows.demo"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"{STARTING} (first start creates its database in {home.resolve() / 'prefect'}) …" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "ephemeral docs site" not in done.stderr  # a library's INFO line is no part of the demo's output
    # Both searches print their citations: title, file and page.
    assert "Riverbend Hydro Employee Handbook  (employee-handbook.pdf p.2)" in done.stdout
    assert "Turbine operations runbook  (turbine-runbook.docx)" in done.stdout
    assert "27 days of paid annual leave" in done.stdout
    # Prefect's state is the demo's, under MILLRACE_HOME; nothing lands in the user's home.
    assert (home / "prefect" / "prefect.db").is_file()
    assert not (user / ".prefect").exists()
