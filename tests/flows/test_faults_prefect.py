"""A real `prefect server start` (its own PREFECT_HOME and SQLite, not the session's harness) killed and started again
on the same port and database while `millrace ingest` runs against it in another process. Prefect's client retries
(PREFECT_CLIENT_MAX_RETRIES=5, waits of about 2, 4, 8, 16, 32 s, ConnectError included once it has connected), so
the run finishes; its flow run must end Completed in the restarted server and the index equal a clean run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from millrace import clients
from millrace.config import load_settings
from millrace.ledger.book import pending, runs
from tests.conftest import ROOT, free_port
from tests.faultproxy import wait_until
from tests.flows.test_faults_s3 import clean_rows, run_states
from tests.flows.test_mirror import rows, words

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class PrefectServer:
    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_UI_ENABLED="false")
        with open(self.home / "server.log", "a") as log:
            # Its own session: the kill below reaches every process it started, and nothing else.
            self.proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                          "127.0.0.1", "--port", str(self.port)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.healthy, f"the Prefect server on port {self.port}", timeout=timeout, every=0.5)

    def healthy(self) -> bool:
        assert self.proc.poll() is None, (self.home / "server.log").read_text()[-2000:]
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture()
def prefect_server(tmp_path):
    (tmp_path / "prefect-home").mkdir()
    server = PrefectServer(tmp_path / "prefect-home")
    server.start()
    yield server
    server.kill()


def test_an_ingest_outlives_a_prefect_server_restart(prefect_server, settings, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(8):
        (folder / f"tide log {i} #{i}.txt").write_text(words(i))
    env = {**os.environ, "PREFECT_API_URL": prefect_server.url, "MILLRACE_DOCS_PER_BATCH": "1",
           "MILLRACE_DASK_ADDRESS": "", "PREFECT_LOGGING_TO_API_ENABLED": "true"}
    with open(tmp_path / "ingest.log", "w") as log:
        flow = subprocess.Popen([str(Path(sys.executable).parent / "millrace"), "ingest", str(folder), "--collection",
                                 settings.collection], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ledger = clients.ledger(settings)

        def staged() -> bool:
            assert flow.poll() is None, (tmp_path / "ingest.log").read_text()[-3000:]
            with ledger.engine.connect() as conn:
                return bool(conn.execute(select(func.count()).select_from(pending)).scalar())

        wait_until(staged, "the run to stage its first batch", timeout=90, every=0.05)
        prefect_server.kill()  # SIGKILL: no graceful shutdown, in-flight requests are cut
        time.sleep(3)
        prefect_server.start()
        assert flow.wait(100) == 0, (tmp_path / "ingest.log").read_text()[-3000:]
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait(10)

    s = load_settings(collection=settings.collection)
    with ledger.engine.connect() as conn:
        run_id = conn.execute(select(runs.c.run_id).where(runs.c.collection.startswith(s.collection))).scalar_one()
    assert run_states(s) == ["done"]
    state = httpx.get(f"{prefect_server.url}/flow_runs/{run_id}", timeout=10).json()["state"]
    assert state["type"] == "COMPLETED", state
    assert rows(s) == clean_rows(str(folder), s) and len(rows(s)) >= 8
