"""Two ingests of one collection at once: one waits for the other's lease, saying so, and both reconcile."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.test_mirror import words

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def start(args, env):
    return subprocess.Popen([str(Path(sys.executable).parent / "millrace"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_runs_at_once_serialize_on_the_lease_and_reconcile(tmp_path, milvus_server, dask_cluster, prefect_api):
    a, b = tmp_path / "team a", tmp_path / "team b"
    for i, folder in enumerate((a, b)):
        folder.mkdir()
        for j in range(6):
            (folder / f"note {j}.txt").write_text(words(10 * i + j))
    env = {**os.environ, "MILLRACE_HOME": str(tmp_path / "home"), "MILLRACE_MILVUS_URI": milvus_server,
           "MILLRACE_DASK_ADDRESS": dask_cluster.scheduler_address, "PREFECT_API_URL": prefect_api,
           "PREFECT_LOGGING_LEVEL": "INFO"}
    args = ["ingest", "--collection", "shared_c", "--json"]
    procs = [start([*args, str(folder)], env) for folder in (a, b)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all(s["reconciled"] and s["indexed"] == 6 for s in summaries)
    waited = [s["phase_seconds"]["wait_for_lease"] for s in summaries]
    logs = "".join(err + out for out, err in outs)
    assert max(waited) > 0 and "waiting for collection shared_c" in logs
    status = subprocess.run([str(Path(sys.executable).parent / "millrace"), "status", "--json", "--collection",
                             "shared_c"], env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(status.stdout)
    assert report["counts"] == {"indexed": 12} and report["last_run"]["reconciled"]
    assert report["last_run"]["milvus_count"] == report["last_run"]["ledger_count"]
