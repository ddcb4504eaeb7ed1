"""`millrace serve`: the API under uvicorn.

On Milvus Lite this process owns the data file while it runs (Lite admits one opener); its lock says who it is, so
an ingest started beside it fails with an error naming it (millrace.index.lite_lock). `make server` runs
a Milvus server instead, where serving and ingests share the index."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from millrace.index.lite_lock import hold
from millrace.observe import logs, telemetry
from serving.config import ServeSettings

if TYPE_CHECKING:
    from serving.app import Background


def claim_lite(settings: ServeSettings, url: str) -> None:
    """Take the Lite file for this process's life before anything opens it, saying who we are (the error a second
    opener gets names us); a second `millrace serve` or an ingest beside us stops here with LiteHeld (exit 2)."""
    if settings.milvus_is_lite:
        hold(settings.resolved_milvus_uri, command="millrace serve", url=url)


def serve(settings: ServeSettings, host: str | None = None, port: int | None = None, log_level: str = "info",
          background: Background | None = None) -> int:
    """`background(stop)` runs in a thread beside the app once it serves (`serve --watch`), until `stop` is set."""
    import uvicorn

    from serving.app import create_app

    host, port = host or settings.serve_host, port or settings.serve_port
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys and not settings.api_keys_block:
        print(f"millrace serve: warning: listening on {host} without API keys (MILLRACE_API_KEYS): anyone who can "
              "reach it can search and spend LLM time", file=sys.stderr)
    url = f"http://{host}:{port}"
    claim_lite(settings, url)
    print(f"Millrace API on {url}  (page: {url}/, OpenAI base URL: {url}/v1)", flush=True)
    telemetry.setup("millrace-serve", settings)
    # uvicorn's own access log is off: the app writes one line per request with its request and trace ids.
    config = uvicorn.Config(create_app(settings, background), host=host, port=port, log_level=log_level,
                            access_log=False, timeout_graceful_shutdown=10)  # configures uvicorn's loggers
    logs.configure(settings, loggers=("", "uvicorn", "uvicorn.error"), console=True)
    uvicorn.Server(config).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from serving.config import load_serve_settings

    p = argparse.ArgumentParser(prog="python -m serving.server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    args = p.parse_args(argv)
    return serve(load_serve_settings(), args.host, args.port)


if __name__ == "__main__":
    raise SystemExit(main())
