"""Incremental runs as fractions of the full run: a no-op re-run, and a re-run after 1% of the records changed.

    python bench/incremental.py --corpus ../shared/data/scifact --limit 1000"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="a BEIR folder or .jsonl[.gz] of records")
    ap.add_argument("--limit", type=int, default=1000, help="0: the whole corpus")
    ap.add_argument("--fraction", type=float, default=0.01)
    args = ap.parse_args()
    from flows.api import ensure_prefect_api
    from flows.ingest import ingest
    from millrace.benchmark import take

    ensure_prefect_api()
    rows = []
    with tempfile.TemporaryDirectory(prefix="millrace-incr-") as tmp:
        source = take(args.corpus, args.limit or 10**12, Path(tmp))  # always a private copy: it gets edited
        options = {"home": str(Path(tmp) / "home")}

        def run(label: str, note: str = "") -> None:
            print(f"{label} ...", flush=True)
            t = time.perf_counter()
            s = ingest(source=str(source), collection="incr", options=options)
            rows.append({"run": label, "seconds": round(time.perf_counter() - t, 2), "processed": s["processed"],
                         "embedded": s["chunks_embedded"], "reused": s["chunks_reused"], "note": note})

        run("full")
        run("no-op re-run")
        n = change_fraction(source, args.fraction)
        run(f"{args.fraction:.0%} changed", f"{n} records edited")
    for r in rows:
        r["fraction_of_full"] = round(r["seconds"] / rows[0]["seconds"], 4)
    print(table(rows, ["run", "seconds", "fraction_of_full", "processed", "embedded", "reused", "note"]))
    write("incremental", {"corpus": str(args.corpus), "limit": args.limit, "runs": rows})


if __name__ == "__main__":
    main()
