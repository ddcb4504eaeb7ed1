"""The processes of the local platform (millrace.platform.control): started detached, found again, stopped for good.

Every process the platform starts carries MARKER=<its MILLRACE_HOME> in its environment, and children inherit it:
honcho's shells, the services, Milvus's `milvus run standalone`, Dask's nanny and worker processes, the flow-run
processes of the Prefect worker. Stopping by marker rather than by process tree catches what was re-parented to init
when its parent died, and never touches another home's platform or an unrelated process with a similar name."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

MARKER = "MILLRACE_PLATFORM_HOME"


def port_taken(port: int) -> bool:
    """Whether something on this host would keep a service from listening on 127.0.0.1:port."""
    with socket.socket() as s:
        # As the servers do: connections of a stopped server in TIME_WAIT must not count as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    with socket.socket() as s:  # a server bound to 0.0.0.0 with SO_REUSEADDR still answers here
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def launch(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> psutil.Process:
    """Start `cmd` in a session of its own (a terminal's Ctrl-C or hang-up does not reach it), output to `log`."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return psutil.Process(proc.pid)


def marked(home: Path) -> list[psutil.Process]:
    """The live processes started for the platform of `home` (zombies excluded: they are already gone)."""
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in me:
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARKER) == str(home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stopped_services(honcho_log: Path) -> list[str]:
    """The services honcho saw exit, first first (from its `<name>.1 stopped (rc=N)` lines)."""

    return list(dict.fromkeys(re.findall(r"\| (\S+)\.\d+ stopped \(rc=", tail(honcho_log, 200))))


def describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:160]}"
    except psutil.Error:
        return f"pid {proc.pid}"


def is_prefect_worker(proc: psutil.Process) -> bool:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return False
    # `prefect worker start ...` or `python .../bin/prefect worker start ...`
    return any(Path(c).name == "prefect" and cmd[i + 1:i + 3] == ["worker", "start"] for i, c in enumerate(cmd[:2]))


def signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:  # gone in the meantime
            pass


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` s for the processes to exit; the ones still alive. Children of ours are reaped."""
    _, left = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in left if alive(p)]


def kill_marked(home: Path, grace: float = 8.0) -> list[str]:
    """Stop whatever is still marked for `home`: SIGINT to a Prefect worker (it ignores SIGTERM once its server is
    gone), SIGTERM to the rest, SIGKILL after `grace` s. Returns what was found; raises if anything survives."""
    procs = marked(home)
    if not procs:
        return []
    found = [describe(p) for p in procs]
    workers = [p for p in procs if is_prefect_worker(p)]
    signal_all(workers, signal.SIGINT)
    signal_all([p for p in procs if p not in workers], signal.SIGTERM)
    alive = wait_gone(procs, grace)
    signal_all(alive, signal.SIGKILL)
    alive = wait_gone(alive, 10.0)
    time.sleep(0.2)
    if survivors := [describe(p) for p in alive] + [describe(p) for p in marked(home) if p not in procs]:
        raise RuntimeError("these platform processes survived SIGKILL: " + "; ".join(survivors))
    return found


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, for error messages."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"
