"""One Millrace process per Milvus Lite file: a lock of Millrace's own, taken before the file is opened and held
for the rest of the process's life.

milvus-lite 2.5.1 locks its data too (lockf on `.<file>.lock`), but a refused opener's `Server.stop()`, which its
`__del__` runs after the failed `start()`, unlinks that lock file while the holder still locks it: the next opener
creates a fresh one and gets in, and two processes write one file. So Millrace takes an `flock` on
`<file>.millrace.lock` first, never unlinks it, and a process refused by it never reaches milvus-lite at all. Only the
holder writes the lock file (who it is: command, pid, URL), so a refused process can name it and touches nothing."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from millrace.config import ConfigError

_guard = threading.Lock()
_held: dict[str, int] = {}  # lock path -> the descriptor holding its flock


def _drop_in_child() -> None:
    """A forked child shares the holder's open file description, so its copy of the descriptor would keep the lock
    after the holder exits (naming a dead pid): close it. That releases nothing while the holder lives."""
    global _guard
    _guard = threading.Lock()  # another thread may have held it at the fork
    for fd in _held.values():
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_drop_in_child)


class LiteHeld(ConfigError):
    """Another process holds the Lite file (the message names it and says what to do)."""


def lock_path(lite_uri: str | os.PathLike) -> Path:
    db = Path(lite_uri).absolute().resolve()
    return db.with_name(f"{db.name}.millrace.lock")


def _this_command() -> str:
    """`millrace serve`, `millrace ingest`, or the program's name: never more of argv, which may hold secrets."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("", "-c") else "python"
    if prog == "millrace" and len(sys.argv) > 1 and sys.argv[1].isidentifier():
        return f"millrace {sys.argv[1]}"
    return prog


def holder(lite_uri: str | os.PathLike) -> dict:
    """What the holder wrote about itself; {} while it is still writing it (or never did)."""
    try:
        note = json.loads(lock_path(lite_uri).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def _refusal(lite_uri: str | os.PathLike) -> str:
    note = holder(lite_uri)
    if note.get("pid"):
        url = f", {note['url']}" if note.get("url") else ""
        who = f"held by `{note.get('command') or 'a millrace process'}` (pid {note['pid']}{url})"
    else:
        who = "held by another millrace process"
    return (f"Milvus Lite data {lite_uri} is {who}. Milvus Lite lets one process open its data: wait for that "
            "process or stop it, or run a Milvus server (`make server`) and set "
            "MILLRACE_MILVUS_URI=http://127.0.0.1:19530, where serving and ingests share the index")


def hold(lite_uri: str | os.PathLike, command: str | None = None, url: str = "") -> None:
    """Take the lock of this Lite file for the rest of this process's life, or raise LiteHeld naming the holder.
    Taking it again in the same process is a no-op (a `command` or `url` given then updates what it says)."""
    path = lock_path(lite_uri)
    with _guard:
        taken = _held.get(str(path))
        if taken is not None:
            if command or url:
                _describe(taken, command, url)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: a refused process must leave the holder's note as it is.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Closing our own descriptor drops no lock: an flock belongs to the holder's open file description
            # (unlike milvus-lite's lockf, which any close in the owning process releases).
            os.close(fd)
            raise LiteHeld(_refusal(lite_uri)) from None
        except BaseException:
            os.close(fd)
            raise
        _held[str(path)] = fd
        _describe(fd, command, url)


def _describe(fd: int, command: str | None, url: str) -> None:
    note = json.dumps({"pid": os.getpid(), "command": command or _this_command(), "url": url,
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    # Rewritten in place: replacing the file would leave the lock on an inode nobody else opens.
    os.ftruncate(fd, 0)
    os.pwrite(fd, note.encode(), 0)


def start_lite(lite_uri: str, listen_timeout_s: float = 60.0) -> None:
    """Start milvus-lite's server for this file under our lock, so the MilvusClient that follows finds it running.

    A start refused by milvus-lite's own lock (a program other than Millrace has the file open) is disarmed before it
    is dropped: its stop() would unlink that program's lock file (milvus-lite 2.5.1; uses its ServerManager's
    private registry, the one pymilvus' connection manager looks in)."""
    from milvus_lite.server import Server
    from milvus_lite.server_manager import server_manager_instance as manager

    hold(lite_uri)
    key = str(Path(lite_uri).absolute().resolve())
    with manager._lock:
        if key in manager._servers:
            return
        try:
            server = Server(key)
        except RuntimeError as exc:  # a file name milvus-lite does not take (it says which)
            raise ConfigError(f"cannot open Milvus Lite data {lite_uri}: {exc}") from None
        if server.init() and server.start():
            try:
                _wait_listening(server, lite_uri, listen_timeout_s)
            except ConfigError:
                server.stop()  # ours, started above: a later open starts afresh instead of finding a dead one
                raise
            manager._servers[key] = server
            return
        if server._lock_fd is not None:
            server._lock_fd.close()  # this process never got milvus-lite's lock, so closing releases nothing
            server._lock_fd = None
        server.stop = lambda: None  # what __del__ calls
    raise ConfigError(f"cannot open Milvus Lite data {lite_uri}: milvus-lite could not start on it (another program "
                      "has it open, or the file is not a Milvus Lite database). Milvus Lite lets one process open its "
                      "data: stop that program, or run a Milvus server (`make server`) and set "
                      "MILLRACE_MILVUS_URI=http://127.0.0.1:19530")


def _wait_listening(server, lite_uri: str, timeout_s: float) -> None:
    """Until the server accepts connections on its socket. milvus-lite's start() returns once the process has lived
    0.5 s, and pymilvus' first call (Connect) fails at once, whatever its timeout, while nothing listens yet: on a
    loaded machine a cold start (a ~200 MB binary, the data file opened) takes longer than that."""
    path = server.uds_path.removeprefix("unix:")
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                return
            except OSError:  # not created yet, or nobody accepting on it yet
                pass
        code = server._p.poll() if server._p is not None else None
        if code is not None or time.monotonic() > deadline:
            why = f"its server exited with code {code}" if code is not None else \
                f"its server did not listen within {timeout_s:.0f} s"
            raise ConfigError(f"cannot open Milvus Lite data {lite_uri}: {why} (its log is on this process's "
                              "stderr); check the file is a Milvus Lite database and the disk has room")
        time.sleep(0.05)
