"""The `millrace` console command: millrace.cli's parser and Prefect-free commands, plus the commands that run
Prefect flows (ingest, eval, bench ingest, rebuild, watch, drain).

Prefect is imported only by those commands, and by settings loading only when Prefect blocks are asked for
(MILLRACE_BLOCKS / --blocks), so `millrace search` and `millrace status` start without it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from flows.options import flow_options
from millrace import cli, config
from millrace.config import Settings


def load_settings(**flags: Any) -> Settings:
    """Flags, then MILLRACE_* env, then the Prefect blocks named by MILLRACE_BLOCKS / --blocks, then defaults."""
    settings = config.load_settings(**flags)
    if not settings.blocks:
        return settings
    from flows.api import ensure_prefect_api

    ensure_prefect_api(settings.home)  # blocks are read from an API; Prefect's own fallback gives one only 20 s
    from blocks import load_settings as with_blocks  # imports Prefect

    return with_blocks(**flags)


class _NoRunTracebacks(logging.Filter):
    """A failed run's traceback stays in its logs in the Prefect API (the UI, `prefect flow-run logs`); the terminal
    gets its one line, then millrace's own sentence. With PREFECT_LOGGING_LEVEL=DEBUG the terminal gets it too."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Handlers of the run loggers (the API's) have formatted the record already: this filter is on the root's.
        if record.exc_info and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")) \
                and logging.getLogger("prefect").getEffectiveLevel() > logging.DEBUG:
            record.exc_info = record.exc_text = None
        return True


def with_prefect(run, settings: Settings):
    """Run `run()` against one Prefect API, shared by the flow and the Dask workers it spawns."""
    from flows.api import ensure_prefect_api

    ensure_prefect_api(settings.home)
    import prefect.main  # noqa: F401  (sets up Prefect's logging: its console handler is on the root logger)
    from prefect.logging.handlers import PrefectConsoleHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, _NoRunTracebacks)
                                                                  for f in handler.filters):
            handler.addFilter(_NoRunTracebacks())

    with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        return run()


def cmd_ingest(args: argparse.Namespace, load: cli.SettingsLoader) -> int:
    settings = cli.settings_from(args, load)
    options = flow_options(settings)

    def run():
        from flows.ingest import ingest

        return ingest(source=args.source, collection=settings.collection, retry_failed=args.retry_failed,
                      objects=args.objects, options=options)

    summary = with_prefect(run, settings)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        from millrace.observe.collection_report import describe_scope

        print(f"scope: {describe_scope(summary['scope'])}")
        print(f"{summary['seen']} seen, {summary['indexed']} indexed, {summary['skipped']} unchanged, "
              f"{summary['waiting']} waiting to retry, {summary['failed']} failed, {summary['quarantined']} quarantined, {summary['deleted']} deleted; {summary['chunks_written']} chunks in "
              f"{summary['seconds']:.1f}s ({summary['docs_per_s']:.2f} docs/s, {summary['chunks_per_s']:.1f} chunks/s)")
        for f in summary["failures"]:
            retry = "retried automatically" if f.get("transient") else "retried when changed"
            print(f"  {'quarantined' if f['stage'] == 'quality' else 'failed'}  {f['source_uri']}  [{f['stage']}] "
                  f"{f['reason']}: {f['detail'][:150]} ({retry})")
    return 0


def cmd_eval(args: argparse.Namespace, load: cli.SettingsLoader) -> int:
    settings = cli.settings_from(args, load)
    options = flow_options(settings, drop=("collection",))

    def run():
        from flows.evaluate import evaluate

        return evaluate(data_dir=args.data_dir, collection=args.collection, mode=args.mode, split=args.split,
                        options=options, min_ndcg=args.min_ndcg)

    result = with_prefect(run, settings)
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


def cmd_bench(args: argparse.Namespace, load: cli.SettingsLoader) -> int:
    from flows.bench import bench_ingest
    from millrace.benchmark import format_ingest

    settings = cli.settings_from(args, load, cli.BENCH_FLAGS)
    result = with_prefect(lambda: bench_ingest(args.corpus, settings, limit=args.limit, progress=not args.json),
                          settings)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    print(json.dumps(result) if args.json else format_ingest(result))
    return 0


def cmd_rebuild(args: argparse.Namespace, load: cli.SettingsLoader) -> int:
    # --model, --embed-backend, --chunk-size and --chunk-overlap are the new collection's, pinned for it by the flow
    keys = [k for k in cli.SETTING_FLAGS if k not in ("model", "embed_backend", "chunk_size", "chunk_overlap")]
    settings = cli.settings_from(args, load, keys)
    options = flow_options(settings, drop=("collection",))

    def run():
        from flows.rebuild import rebuild

        return rebuild(collection=settings.collection, sources=args.sources, model=args.model,
                       embed_backend=args.embed_backend, chunk_size=args.chunk_size,
                       chunk_overlap=args.chunk_overlap, eval_data_dir=args.eval_data_dir, min_ndcg=args.min_ndcg,
                       warmup_queries=args.warmup_queries, grace_hours=args.grace_hours, options=options)

    result = with_prefect(run, settings)
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    check, gate = result["reconciliation"], result.get("gate")
    print(f"{result['collection']}: now served by {result['new']} (was {result['old']}, kept {args.grace_hours:g} h "
          f"for `millrace rollback`)")
    print(f"{sum(r['indexed'] for r in result['runs'])} documents indexed from {len(result['runs'])} source(s); "
          f"{check['milvus_count']} chunks, reconciliation {'OK' if check['ok'] else 'MISMATCH'}"
          + (f"; nDCG@10 {gate['ndcg@10']:.4f} on {gate['dataset']}" if gate else ""))
    if result.get("missing_documents"):
        print(f"  not in any rebuilt source (served before, not now): {', '.join(result['missing_documents'])}")
    return 0


def cmd_rollback(args: argparse.Namespace, load: cli.SettingsLoader) -> int:
    settings = cli.settings_from(args, load)
    options = flow_options(settings, drop=("collection",))

    def run():
        from flows.rebuild import rollback

        return rollback(collection=settings.collection, grace_hours=args.grace_hours, options=options)

    result = with_prefect(run, settings)
    print(json.dumps(result) if args.json else f"{result['collection']}: now served by {result['to']} (was "
                                                 f"{result['from']}, kept {args.grace_hours:g} h)")
    return 0


def _folder(path: str) -> str:
    if not os.path.isdir(path):
        raise config.ConfigError(f"not a folder: {path}")
    return path


def _keep_our_signals() -> None:
    """An in-process JVM (Tika, started by the first extraction) takes SIGTERM and SIGINT over and exits at once (143)
    unless told -Xrs: a long-lived process that must end its drain cleanly passes it before any JVM starts. Only
    these processes: a Dask worker's JVM keeps its own handlers, or a worker told to stop by its nanny would wait for
    the JVM's threads instead of exiting (the halting-JVM fault test hangs)."""
    options = os.environ.get("JAVA_TOOL_OPTIONS", "")
    if "-Xrs" not in options.split():
        os.environ["JAVA_TOOL_OPTIONS"] = f"{options} -Xrs".strip()


def cmd_watch(args: argparse.Namespace, load: cli.SettingsLoader) -> int:
    import signal
    import threading

    settings = cli.settings_from(args, load)
    folder, stop = _folder(args.folder), threading.Event()
    _keep_our_signals()

    def on_signal(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: do not wait for the round in progress
        print("millrace watch: stopping after the round in progress (Ctrl-C again to stop now)", file=sys.stderr,
              flush=True)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)

    def run():
        from flows.watch import run_watch

        run_watch(settings, folder, stop, report=lambda line: print(line, flush=True), options=flow_options(settings))

    # The loop runs in a thread so that SIGTERM stays ours: in the main thread each flow run would take it over and
    # kill its round, where here it ends the drain after the round in progress.
    failed: list[BaseException] = []

    def work():
        try:
            with_prefect(run, settings)
        except BaseException as exc:
            failed.append(exc)
        finally:
            stop.set()

    loop = threading.Thread(target=work, name="watch", daemon=True)
    loop.start()
    while loop.is_alive():
        loop.join(0.5)
    if failed:
        raise failed[0]
    return 0


def cmd_drain(args: argparse.Namespace, load: cli.SettingsLoader) -> int:
    settings = cli.settings_from(args, load)
    options = flow_options(settings)

    def run():
        from flows.drain import drain

        return drain(collection=settings.collection, options=options)

    done = with_prefect(run, settings)
    rounds = f"{done['rounds']} round{'s' * (done['rounds'] != 1)}"
    print(json.dumps(done) if args.json else f"{done['collection']}: indexed {done['changes']} changes in {rounds} "
                                              f"({done['retrying']} retrying, {done['dead']} dead) in "
                                              f"{done['seconds']:.1f}s")
    return 0


def cmd_serve(args: argparse.Namespace, load: cli.SettingsLoader) -> int:
    """The API (serving/): its own settings on top of the core's, Prefect blocks included when configured."""
    from serving.config import load_serve_settings
    from serving.server import serve

    base = cli.settings_from(args, load)
    settings = load_serve_settings(**dict(base))
    if settings.api_keys_block:  # read from a Prefect API
        from flows.api import ensure_prefect_api
        from serving.security import keys_from_block

        ensure_prefect_api(base.home)
        try:  # here, so that a wrong name is a sentence rather than the app's startup traceback
            keys_from_block(settings.api_keys_block)
        except ValueError as exc:  # Prefect's "Unable to find block document named ..."
            raise config.ConfigError(f"MILLRACE_API_KEYS_BLOCK={settings.api_keys_block!r}: {exc} in the Prefect API "
                                     f"at {os.environ.get('PREFECT_API_URL')}; save a Secret block by that name, "
                                     "or unset it") from None
    background = None
    if args.watch:  # here, in the process that serves: on the embedded default it is the one that owns the Lite file
        from flows.api import ensure_prefect_api

        folder, options = _folder(args.watch), flow_options(base)
        ensure_prefect_api(base.home)
        _keep_our_signals()
        from flows.watch import run_watch  # imports Prefect now, not in the thread after the server is up

        watch_log = logging.getLogger("millrace.watch")
        watch_log.setLevel(logging.INFO)  # a line per drain, as `millrace watch` prints

        def background(stop):
            with_prefect(lambda: run_watch(base, folder, stop, report=watch_log.info, options=options), base)
    return serve(settings, args.host, args.port, background=background)


HANDLERS: dict[str, cli.Command] = {"serve": cmd_serve, "ingest": cmd_ingest, "eval": cmd_eval, "bench": cmd_bench,
                                    "rebuild": cmd_rebuild, "rollback": cmd_rollback, "watch": cmd_watch,
                                    "drain": cmd_drain}


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, handlers=HANDLERS, load=load_settings)


if __name__ == "__main__":
    sys.exit(main())
