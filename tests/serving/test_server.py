"""`millrace serve` as a person runs it: it answers /v1/search over an index built by `millrace ingest`, and on Milvus
Lite it owns the data file, so an ingest started beside it fails with an error that names it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from millrace.samples import write_samples
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MILLRACE = str(Path(sys.executable).parent / "millrace")


def test_millrace_serve_answers_search_and_an_ingest_beside_it_names_it(tmp_path, prefect_api):
    docs = tmp_path / "my docs"
    write_samples(docs)
    env = {**os.environ, "MILLRACE_HOME": str(tmp_path / "home"), "MILLRACE_DASK_ADDRESS": "",
           "MILLRACE_RETRY_DELAYS": "[0.2]"}
    done = subprocess.run([MILLRACE, "ingest", str(docs)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    port = free_port()
    log = tmp_path / "serve.log"
    server = subprocess.Popen([MILLRACE, "serve", "--port", str(port)], env=env, stdout=log.open("w"),
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        hits = httpx.post(f"http://127.0.0.1:{port}/v1/search", timeout=60,
                          json={"query": "How many days of paid leave do new employees get?", "k": 3}).json()["hits"]
        assert hits[0]["source_uri"].endswith("employee-handbook.pdf") and hits[0]["page"] == 2
        beside = subprocess.run([MILLRACE, "ingest", str(docs)], env=env, capture_output=True, text=True,
                                timeout=300)
        assert beside.returncode == 2
        assert f"held by `millrace serve` (pid {server.pid}, http://127.0.0.1:{port})" in beside.stderr, beside.stderr
        assert "make server" in beside.stderr
    finally:
        server.terminate()
        server.wait(30)
    assert not list((tmp_path / "home").glob("*.owner.json"))  # a stopped server no longer claims the file
