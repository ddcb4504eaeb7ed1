"""`make server`: a local Milvus standalone server that flows, Dask workers and serving can share.

Milvus Lite lets one process open its data; this is the real server (PyPI `milvus`), on loopback."""

from __future__ import annotations

import os
import signal
import threading

from millrace.config import load_settings


# Strong reads (a batch's old chunk ids before staging, reconciliation's counts) wait for the proxy's time tick.
# Milvus' 200 ms made each one 200-400 ms, several per draining round; 50 ms makes them ~60-150 ms for ~5 % of a
# core while idle (measured with milvus 2.3.5 on 2 cores, BENCHMARKS "Continuous indexing").
TIME_TICK_MS = 50


def configure(server) -> None:
    """Settings of ours in the `milvus` package's config template (it only fills its own {{ }} fields)."""
    cfg = server.config
    default, ours = "timeTickInterval: 200 #", f"timeTickInterval: {TIME_TICK_MS} #"
    if ours in cfg.template_text:
        return
    if default not in cfg.template_text:
        raise RuntimeError("the milvus package's config template changed: proxy.timeTickInterval not found")
    cfg.template_text = cfg.template_text.replace(default, ours, 1)


def main() -> None:
    from milvus import default_server

    configure(default_server)
    base = load_settings().home / "milvus-server"
    default_server.set_base_dir(str(base.resolve()))
    default_server.listen_port = int(os.environ.get("MILLRACE_SERVER_PORT", "19530"))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    default_server.start()  # moves to the next free port if that one is taken
    try:
        print(f"Milvus standalone on 127.0.0.1:{default_server.listen_port}, data in {base}\n"
              f"  export MILLRACE_MILVUS_URI=http://127.0.0.1:{default_server.listen_port}\n"
              "Ctrl-C stops it.", flush=True)
        stop.wait()
    finally:
        default_server.stop()  # also stops its `milvus run standalone` child


if __name__ == "__main__":
    main()
