"""flows.api: the Prefect API a command starts when none is configured, in fresh processes as a user's would be."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = """
import os, httpx
from flows.api import ensure_prefect_api
url = ensure_prefect_api({home!r})
assert httpx.get(url + "/health").status_code == 200
print(os.environ["PREFECT_HOME"])
"""


def start(home: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MILLRACE_"))}
    env.update(extra)
    return subprocess.run([sys.executable, "-c", START.format(home=str(home))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_two_first_starts_on_one_fresh_home_share_one_migration(tmp_path):
    """Side by side, both get a working API on the one database under MILLRACE_HOME (they migrate it one after the
    other, under a lock in PREFECT_HOME)."""
    home = tmp_path / "home"
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: start(home, HOME=str(tmp_path)), range(2)))
    for done in runs:
        assert done.returncode == 0, done.stderr[-3000:]
        assert "starting a local Prefect API" in done.stderr
        assert done.stdout.strip() == str(home.resolve() / "prefect")
    assert (home / "prefect" / "prefect.db").is_file()
    assert not (tmp_path / ".prefect").exists()


def test_a_prefect_home_the_user_set_is_kept(tmp_path):
    mine = tmp_path / "mine"
    done = start(tmp_path / "home", HOME=str(tmp_path), PREFECT_HOME=str(mine))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(mine)
    assert (mine / "prefect.db").is_file() and not (tmp_path / "home" / "prefect").exists()
