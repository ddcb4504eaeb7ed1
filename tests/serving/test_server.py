"""`millrace serve` as a person runs it: it answers /v1/search over an index built by `millrace ingest`, and on Milvus
Lite it owns the data file: searches, an ingest and a second serve started beside it are refused with an error that
names it, and neither the server nor its data notice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from millrace.sources.samples import write_samples
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MILLRACE = str(Path(sys.executable).parent / "millrace")


def test_millrace_serve_holds_the_lite_file_and_refuses_every_opener_beside_it(tmp_path, prefect_api):
    docs, home = tmp_path / "my docs", tmp_path / "home"
    write_samples(docs)
    env = {**os.environ, "MILLRACE_HOME": str(home), "MILLRACE_DASK_ADDRESS": "",
           "MILLRACE_RETRY_DELAYS": "[0.2]", "MILLRACE_CACHE": "false"}  # every search below reads the index
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
        base = f"http://127.0.0.1:{port}"
        question = {"query": "How many days of paid leave do new employees get?", "k": 5}
        before = httpx.post(f"{base}/v1/search", timeout=60, json=question).json()["hits"]
        assert before[0]["source_uri"].endswith("employee-handbook.pdf") and before[0]["page"] == 2
        lock = home / "milvus.db.millrace.lock"
        note = lock.read_bytes()
        holder = f"held by `millrace serve` (pid {server.pid}, {base})"
        # If the ingest beside the server got in, this would be indexed.
        (docs / "bicycle-policy.md").write_text("# Bicycle policy\n\nEvery employee may borrow a cargo bicycle for "
                                                "errands on Tuesdays.\n")
        # Two searches: a refused one once unlocked the file on its way out, and the next one got in.
        beside = [[MILLRACE, "search", "paid leave"], [MILLRACE, "search", "paid leave"],
                  [MILLRACE, "ingest", str(docs)], [MILLRACE, "serve", "--port", str(free_port())]]
        for argv in beside:
            refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
            assert refused.returncode == 2, (argv, refused.stdout[-2000:], refused.stderr[-2000:])
            assert holder in refused.stderr and "make server" in refused.stderr, (argv, refused.stderr[-2000:])
            assert lock.read_bytes() == note  # what the holder says about itself is its own to write
        assert server.poll() is None
        assert httpx.get(f"{base}/health", timeout=30).json() == {"status": "ok"}
        after = httpx.post(f"{base}/v1/search", timeout=60, json=question).json()["hits"]
        assert [(h["chunk_id"], h["score"]) for h in after] == [(h["chunk_id"], h["score"]) for h in before]
    finally:
        server.terminate()
        server.wait(30)
    after_stop = subprocess.run([MILLRACE, "search", "cargo bicycle on Tuesdays", "--json"], env=env,
                                capture_output=True, text=True, timeout=300)
    assert after_stop.returncode == 0, after_stop.stderr[-2000:]  # the lock went with the server
    assert not [h for h in json.loads(after_stop.stdout)["hits"] if "bicycle" in h["source_uri"]]
