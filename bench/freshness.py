"""Upload-to-searchable time on the running platform: S3 (moto) -> SNS -> relay -> Prefect trigger -> process worker
-> standing Dask workers -> Milvus, timed per upload until a search returns the object at rank 1.

    python bench/freshness.py --uploads 24 --every 2.0

Starts its own platform (millrace.platform.control) on free ports under a temporary MILLRACE_HOME, and a moto server
(bench/_platform.py, shared with bench/soak.py); reads the per-document upload-to-searchable seconds the ledger records
too (documents.fresh_s), for comparison."""

from __future__ import annotations

import argparse
import statistics

from _platform import Platform, percentile
from _util import table, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uploads", type=int, default=24)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between uploads")
    ap.add_argument("--timeout", type=float, default=180.0, help="per upload")
    ap.add_argument("--wait-ports", type=float, default=600.0, help="wait this long for another Milvus to go")
    args = ap.parse_args()
    with Platform(args.wait_ports) as p:
        found = p.stream(args.uploads, args.every, args.timeout)
        fresh = p.ledger_fresh()
        rows = [{"upload": i, "searchable_s": round(s, 2) if s is not None else None,
                 "ledger_fresh_s": fresh.get(p.uri(i))} for i, s in found.items()]
        runs, startup = p.flow_runs(), p.ep.startup_s
    times = [r["searchable_s"] for r in rows if r["searchable_s"] is not None]
    result = {"uploads": args.uploads, "every_s": args.every, "searchable": len(times),
              "p50_s": round(statistics.median(times), 2) if times else None,
              "p95_s": round(percentile(times, 0.95), 2) if times else None,
              "max_s": round(max(times), 2) if times else None, "flow_runs": runs,
              "platform_startup_s": round(startup, 1), "per_upload": rows}
    print(table(rows, ["upload", "searchable_s", "ledger_fresh_s"]))
    print(f"{len(times)}/{args.uploads} searchable; p50 {result['p50_s']} s, p95 {result['p95_s']} s, "
          f"{runs} drain runs")
    write("freshness", result)


if __name__ == "__main__":
    main()
