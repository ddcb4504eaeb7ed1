"""Peak memory of the flow process against the size of the run: 2,000 vs 20,000 JSONL records (by default).

Each run is a `millrace ingest --json` subprocess against a Dask scheduler and worker and a Prefect API started here,
so the peak RSS measured (ru_maxrss of a wrapper's only child) is the flow process's own: its workers and the API
are not its children. `--code-root DIR` measures another checkout of Millrace (e.g. `git worktree add /tmp/old <commit>`) with
the same corpus, cluster and API, for a before/after comparison in one run.

    .venv/bin/python bench/memory.py                       # this checkout, 2,000 and 20,000 records
    .venv/bin/python bench/memory.py --code-root /tmp/old  # and an older checkout, side by side
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
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


@contextlib.contextmanager
def dask_cluster(code_root: Path):
    """A `dask scheduler` and one 2-thread `dask worker` on loopback, importing `code_root`'s Millrace."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=code_root, stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "2",
                                   "--no-dashboard"], env=env, cwd=code_root, stderr=subprocess.DEVNULL))
    try:
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--code-root", action="append", default=[], help="another checkout to measure too")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    args = parser.parse_args()
    from millrace.sources.samples import write_records
    from flows.api import ensure_prefect_api

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here: its heartbeat only fails
    ensure_prefect_api()
    results = []
    with tempfile.TemporaryDirectory(prefix="millrace-mem-") as tmp:
        corpora = {n: write_records(Path(tmp) / f"corpus{n}.jsonl", n) for n in map(int, args.sizes.split(","))}
        for root in [ROOT, *map(Path, args.code_root)]:
            with dask_cluster(root) as address:  # workers run the same checkout as the flow
                env = {**os.environ, "MILLRACE_DASK_ADDRESS": address, "HF_HUB_OFFLINE": "1"}
                for n, corpus in corpora.items():
                    r = measure(root, corpus, Path(tmp) / f"home-{n}-{len(results)}", env)
                    r.update(code=str(root), size=n)
                    results.append(r)
                    print(json.dumps(r), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
