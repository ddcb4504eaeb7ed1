"""`make server`: a local Milvus standalone server that flows, Dask workers and serving can share.

Milvus Lite lets one process open its data; this is the real server (PyPI `milvus`), on loopback."""

from __future__ import annotations

import os
import signal
import threading

from millrace.config import load_settings


def main() -> None:
    from milvus import default_server

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
