"""`make demo`: ingest the generated sample corpus on the embedded defaults, then search with citations."""

from __future__ import annotations

import os
import sys
import time

from flows.cli import load_settings, main as cli
from millrace.sources.samples import write_samples

QUERIES = ["How many days of paid leave do new employees get?",
           "What should I do when the turbine vibration alarm goes off?"]


def run() -> int:
    settings = load_settings()
    samples = settings.home / "samples"
    files = write_samples(samples)
    print(f"== Sample corpus: {len(files)} files in {samples} ({', '.join(sorted({f.suffix for f in files}))})")
    started = time.perf_counter()
    print("== millrace ingest", samples, flush=True)
    if cli(["ingest", str(samples)]) != 0:
        return 1
    for query in QUERIES:
        print(f"\n== millrace search {query!r} -k 3", flush=True)
        if cli(["search", query, "-k", "3"]) != 0:
            return 1
    print("\n== millrace status")
    cli(["status"])
    print(f"\nDemo finished in {time.perf_counter() - started:.1f}s. Data: {settings.home.resolve()}")
    return 0


if __name__ == "__main__":  # the guard keeps Dask's spawned workers from re-running the demo
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    sys.exit(run())
