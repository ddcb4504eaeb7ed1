"""The flow process's memory does not grow with the size of the run (batches are written as they finish)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from millrace.sources.samples import write_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def peak_rss(tmp_path, n, dask_cluster, prefect_api) -> dict:
    env = {**os.environ, "MILLRACE_HOME": str(tmp_path / f"home{n}"),
           "MILLRACE_DASK_ADDRESS": dask_cluster.scheduler_address, "PREFECT_API_URL": prefect_api}
    corpus = write_records(tmp_path / f"corpus{n}.jsonl", n)
    done = subprocess.run([str(Path(sys.executable).parent / "millrace"), "ingest", str(corpus), "--json"], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["indexed"] == n and summary["reconciled"]
    return summary


def test_peak_memory_of_a_10000_record_run_is_close_to_a_1000_record_run(tmp_path, dask_cluster, prefect_api):
    small = peak_rss(tmp_path, 1_000, dask_cluster, prefect_api)
    large = peak_rss(tmp_path, 10_000, dask_cluster, prefect_api)
    print(f"peak RSS: 1,000 records {small['peak_rss_mb']} MB, 10,000 records {large['peak_rss_mb']} MB")
    # Keeping every batch until the end cost ~22 KB a record (bench/memory.py: +398 MB from 2,000 to 20,000 records
    # before batches were written as they finished, +16 MB after), so ~200 MB here. 1,000 -> 10,000 still spans five
    # listing pages, in half the suite's time of 2,000 -> 20,000 (615 s on a slow CI day).
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 35
