"""Peak memory of the flow process against the size of the run: 2,000 vs 20,000 JSONL records (by default).

Each run is a `millrace ingest --json` subprocess against one shared Dask LocalCluster and Prefect API started here,
so the subprocess's peak RSS (wait4's ru_maxrss) is the flow process's own: its workers and the API are not its
children. `--code-root DIR` measures another checkout of Millrace (e.g. `git worktree add /tmp/old <commit>`) with
the same corpus, cluster and API, for a before/after comparison in one run.

    .venv/bin/python bench/memory.py                       # this checkout, 2,000 and 20,000 records
    .venv/bin/python bench/memory.py --code-root /tmp/old  # and an older checkout, side by side
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ("import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "sys.stderr.write(p.stderr[-2000:]); print(json.dumps({'rc': p.returncode, 'out': p.stdout, "
           "'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def measure(code_root: Path, corpus: Path, home: Path, env: dict) -> dict:
    """Run one ingest under a fresh wrapper whose only child is the flow process: its children's peak RSS is the
    flow's own (the Dask workers and the Prefect API are not its children), the same way for any checkout."""
    entry = "flows.cli" if (code_root / "flows" / "cli.py").is_file() else "millrace.cli"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", entry, "ingest", str(corpus), "--json"],
                          cwd=code_root, capture_output=True, text=True,
                          env={**env, "MILLRACE_HOME": str(home), "PYTHONPATH": str(code_root)})
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["rc"] != 0:
        raise SystemExit(f"ingest failed in {code_root}: {done.stderr[-2000:]}")
    summary = json.loads(report["out"].strip().splitlines()[-1])
    return {"records": summary["indexed"], "chunks": summary["chunks_written"],
            "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(report["maxrss_kb"] / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--code-root", action="append", default=[], help="another checkout to measure too")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    args = parser.parse_args()
    from distributed import LocalCluster

    from millrace.samples import write_records

    from flows.api import ensure_prefect_api

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here: its heartbeat only fails
    ensure_prefect_api()
    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None)
    env = {**os.environ, "MILLRACE_DASK_ADDRESS": cluster.scheduler_address, "HF_HUB_OFFLINE": "1"}
    results = []
    with tempfile.TemporaryDirectory(prefix="millrace-mem-") as tmp:
        for n in [int(x) for x in args.sizes.split(",")]:
            corpus = write_records(Path(tmp) / f"corpus{n}.jsonl", n)
            for root in [ROOT, *map(Path, args.code_root)]:
                r = measure(root, corpus, Path(tmp) / f"home-{n}-{len(results)}", env)
                r.update(code=str(root), size=n)
                results.append(r)
                print(json.dumps(r), flush=True)
    cluster.close()
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
