"""Incremental runs as fractions of the full run: a no-op re-run, and a re-run after 1% of the records changed,
on the embedded default (a LocalCluster per large run, small change sets in the flow's own process) and on a
standing Dask cluster (what `make server` runs: workers that stay up, warm, between runs).

    python bench/incremental.py --corpus ../shared/data/scifact --limit 1000"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _util import table, write


def change_fraction(path: Path, fraction: float) -> int:
    """Edit the text of every 1/fraction-th record in place (the rest stay byte-identical)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    every = max(1, round(1 / fraction))
    changed = 0
    for i in range(0, len(lines), every):
        rec = json.loads(lines[i])
        rec["text"] = rec.get("text", "") + " (Revised.)"
        lines[i] = json.dumps(rec)
        changed += 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


def series(mode: str, corpus: str, limit: int, fraction: float, dask_address: str) -> list[dict]:
    from flows.ingest import ingest
    from millrace.benchmark import take

    rows = []
    with tempfile.TemporaryDirectory(prefix="millrace-incr-") as tmp:
        source = take(corpus, limit or 10**12, Path(tmp))  # always a private copy: it gets edited
        options = {"home": str(Path(tmp) / "home"), **({"dask_address": dask_address} if dask_address else {})}

        def run(label: str, note: str = "") -> None:
            print(f"{mode}: {label} ...", flush=True)
            t = time.perf_counter()
            s = ingest(source=str(source), collection="incr", options=options)
            rows.append({"mode": mode, "run": label, "seconds": round(time.perf_counter() - t, 2),
                         "processed": s["processed"], "embedded": s["chunks_embedded"], "reused": s["chunks_reused"],
                         "where": "cluster" if "start_workers" in s["phase_seconds"] else
                         "flow process" if "warm_up" in s["phase_seconds"] else "-", "note": note})

        run("full")
        run("no-op re-run")
        n = change_fraction(source, fraction)
        run(f"{fraction:.0%} changed", f"{n} records edited")
    for r in rows:
        r["fraction_of_full"] = round(r["seconds"] / rows[0]["seconds"], 4)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="a BEIR folder or .jsonl[.gz] of records")
    ap.add_argument("--limit", type=int, default=1000, help="0: the whole corpus")
    ap.add_argument("--fraction", type=float, default=0.01)
    args = ap.parse_args()
    from distributed import LocalCluster

    from flows.api import ensure_prefect_api

    ensure_prefect_api()  # before flows.runner imports Prefect: Prefect reads PREFECT_HOME once, on import
    from flows.runner import local_layout
    from millrace.config import load_settings

    os.environ.pop("MILLRACE_DASK_ADDRESS", None)
    rows = series("embedded default", args.corpus, args.limit, args.fraction, "")
    workers, threads = local_layout(load_settings())
    # The same layout a run's LocalCluster gets, but started once, before the runs, and kept: a standing cluster.
    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=None) as cl:
        rows += series("standing cluster", args.corpus, args.limit, args.fraction, cl.scheduler_address)
    print(table(rows, ["mode", "run", "seconds", "fraction_of_full", "where", "processed", "embedded", "reused",
                       "note"]))
    write("incremental", {"corpus": str(args.corpus), "limit": args.limit, "runs": rows})


if __name__ == "__main__":
    main()
