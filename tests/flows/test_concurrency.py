"""Two ingests of one collection at once: each waits for the lease, saying for whom, and both reconcile.

The test holds the collection's lease itself until both runs have said they are waiting, so the runs overlap on
every machine: two runs of six notes each can otherwise finish one after the other, and then nothing is tested."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from millrace import clients
from millrace.config import Settings
from millrace.ledger.lease import Lease
from tests.flows.test_mirror import words

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAITING = "waiting for collection shared_c"


def start(args, env, out: Path):
    with out.with_suffix(".out").open("w") as stdout, out.with_suffix(".err").open("w") as stderr:
        return subprocess.Popen([str(Path(sys.executable).parent / "millrace"), *args], env=env, text=True,
                                stdout=stdout, stderr=stderr)


def said(run: Path) -> str:
    return run.with_suffix(".err").read_text() + run.with_suffix(".out").read_text()


def test_two_runs_at_once_serialize_on_the_lease_and_reconcile(tmp_path, milvus_server, dask_cluster, prefect_api):
    a, b = tmp_path / "team a", tmp_path / "team b"
    for i, folder in enumerate((a, b)):
        folder.mkdir()
        for j in range(6):
            (folder / f"note {j}.txt").write_text(words(10 * i + j))
    home = tmp_path / "home"
    env = {**os.environ, "MILLRACE_HOME": str(home), "MILLRACE_MILVUS_URI": milvus_server,
           "MILLRACE_DASK_ADDRESS": dask_cluster.scheduler_address, "PREFECT_API_URL": prefect_api,
           "PREFECT_LOGGING_LEVEL": "INFO"}
    args = ["ingest", "--collection", "shared_c", "--json"]
    runs = [tmp_path / "a", tmp_path / "b"]
    ledger = clients.ledger(Settings(home=home, collection="shared_c"))
    with Lease(ledger, "shared_c", "test-holder", "the test, until both runs wait", ttl_s=30):
        procs = [start([*args, str(folder)], env, run) for folder, run in zip((a, b), runs)]
        deadline = time.monotonic() + 600
        while not all(WAITING in said(run) for run in runs):
            assert all(p.poll() is None for p in procs), [said(run)[-3000:] for run in runs]
            assert time.monotonic() < deadline, [said(run)[-3000:] for run in runs]
            time.sleep(0.2)
    for p in procs:
        p.wait(timeout=900)
    for p, run in zip(procs, runs):
        assert p.returncode == 0, said(run)[-3000:]
    summaries = [json.loads(run.with_suffix(".out").read_text().strip().splitlines()[-1]) for run in runs]
    assert all(s["reconciled"] and s["indexed"] == 6 for s in summaries)
    assert all(s["phase_seconds"]["wait_for_lease"] > 0 for s in summaries)
    assert all("run test-holder" in said(run) for run in runs)  # each said whom it waited for
    status = subprocess.run([str(Path(sys.executable).parent / "millrace"), "status", "--json", "--collection",
                             "shared_c"], env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(status.stdout)
    assert report["counts"] == {"indexed": 12} and report["last_run"]["reconciled"]
    assert report["last_run"]["milvus_count"] == report["last_run"]["ledger_count"]
