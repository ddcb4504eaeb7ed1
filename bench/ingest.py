"""Ingestion efficiency: end-to-end chunks/s of the real flow divided by the encode-only limit of the same model on
the same chunk texts (best batch size, same process, same run). Same as `millrace bench ingest`, plus a result file.

    python bench/ingest.py --corpus ../shared/data/scifact                 # records, no Tika
    python bench/ingest.py --corpus ../shared/data/docs --name docs        # the Tika path
    python bench/ingest.py --corpus ../shared/data/scifact --device cuda   # fp16 on a GPU machine"""

from __future__ import annotations

import argparse

from _util import write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda runs fp16)")
    ap.add_argument("--name", default="", help="result file bench/results/ingest_<name>.json")
    args = ap.parse_args()
    from flows.api import ensure_prefect_api

    ensure_prefect_api()  # before flows.bench imports Prefect: Prefect reads PREFECT_HOME once, on import
    from flows.bench import bench_ingest
    from millrace.benchmark import format_ingest
    from millrace.config import load_settings

    result = bench_ingest(args.corpus, load_settings(device=args.device), limit=args.limit)
    print(format_ingest(result))
    name = args.name or ("scifact" if "scifact" in args.corpus else "corpus")
    write(f"ingest_{name}_{result['device'].split(':')[0]}", {"result": result})


if __name__ == "__main__":
    main()
