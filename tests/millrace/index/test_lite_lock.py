"""Millrace's own lock on a Milvus Lite file: one process at a time, the refused one names the holder and touches
nothing, the lock goes with its holder however it dies, and milvus-lite's own lock file outlives a refused start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from millrace.index.lite_lock import LiteHeld, hold, holder, lock_path

HOLD = textwrap.dedent("""
    import sys, time
    from millrace.index.lite_lock import hold
    hold(sys.argv[1], command="lock-test holder", url="http://127.0.0.1:1")
    print("held", flush=True)
    time.sleep(600)
""")
TRY = textwrap.dedent("""
    import sys
    from millrace.index.lite_lock import LiteHeld, hold
    try:
        hold(sys.argv[1])
    except LiteHeld as exc:
        print(exc)
        sys.exit(2)
    print("got it")
""")


def _holder(db) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _try(db) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRY, str(db)], capture_output=True, text=True, timeout=60)


@pytest.mark.unit
def test_a_second_process_is_refused_names_the_holder_and_changes_nothing(tmp_path):
    db = tmp_path / "milvus.db"
    first = _holder(db)
    try:
        note = lock_path(db).read_bytes()
        for _ in range(2):  # a refusal must not unlock the file for the next opener
            refused = _try(db)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert f"held by `lock-test holder` (pid {first.pid}, http://127.0.0.1:1)" in refused.stdout
            assert "make server" in refused.stdout
        assert lock_path(db).read_bytes() == note
        assert holder(db)["pid"] == first.pid
    finally:
        first.kill()
        first.wait()


@pytest.mark.unit
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_lock_goes_with_its_holder(tmp_path, how):
    db = tmp_path / "milvus.db"
    first = _holder(db)
    os.kill(first.pid, how)
    first.wait()
    after = _try(db)
    assert after.returncode == 0 and "got it" in after.stdout, after.stdout + after.stderr


FORK_AND_EXIT = textwrap.dedent("""
    import os, sys, time
    from millrace.index.lite_lock import hold
    hold(sys.argv[1])
    child = os.fork()
    if child == 0:  # a forked child (no exec) that outlives the holder
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1), os.dup2(devnull, 2)  # so the test's pipes close when the holder exits
        time.sleep(600)
        os._exit(0)
    print(child, flush=True)
""")


@pytest.mark.unit
def test_a_forked_child_does_not_keep_the_lock_after_its_holder_exits(tmp_path):
    db = tmp_path / "milvus.db"
    parent = subprocess.run([sys.executable, "-c", FORK_AND_EXIT, str(db)], capture_output=True, text=True,
                            timeout=60)
    assert parent.returncode == 0, parent.stderr
    child = int(parent.stdout.split()[0])
    try:
        after = _try(db)
        assert after.returncode == 0 and "got it" in after.stdout, after.stdout + after.stderr
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.unit
def test_taking_it_again_in_the_same_process_is_allowed(tmp_path):
    db = tmp_path / "milvus.db"
    hold(db)
    hold(db, command="millrace serve", url="http://127.0.0.1:2")
    hold(db)  # a later open (the store, a rebuild) keeps what serve said about itself
    assert holder(db) == {**holder(db), "pid": os.getpid(), "command": "millrace serve", "url": "http://127.0.0.1:2"}
    refused = _try(db)
    assert refused.returncode == 2 and f"(pid {os.getpid()}, http://127.0.0.1:2)" in refused.stdout


OTHER_PROGRAM = textwrap.dedent("""
    import sys, time
    from pymilvus import MilvusClient
    MilvusClient(uri=sys.argv[1])  # a program that is not Millrace: milvus-lite's own lock only
    print("open", flush=True)
    time.sleep(600)
""")
MILLRACE_OPEN = textwrap.dedent("""
    import sys
    from millrace.config import ConfigError, Settings
    from millrace.index.connect import connect
    try:
        connect(Settings(milvus_uri=sys.argv[1]))
    except ConfigError as exc:
        print(exc)
        sys.exit(2)
    connect(Settings(milvus_uri=sys.argv[1])).list_collections()  # opened twice in one process
    print("opened")
""")


@pytest.mark.integration
def test_a_start_refused_by_milvus_lite_leaves_its_lock_file_alone(tmp_path):
    """milvus-lite 2.5.1's stop() after a failed start unlinks the lock file of whoever holds the data."""
    db = tmp_path / "milvus.db"
    other = subprocess.Popen([sys.executable, "-c", OTHER_PROGRAM, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "open"
        lite_lock = tmp_path / ".milvus.db.lock"
        assert lite_lock.exists()
        refused = subprocess.run([sys.executable, "-c", MILLRACE_OPEN, str(db)], capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "another program has it open" in refused.stdout and "one process" in refused.stdout
        assert lite_lock.exists()
    finally:
        other.kill()
        other.wait()
    opened = subprocess.run([sys.executable, "-c", MILLRACE_OPEN, str(db)], capture_output=True, text=True,
                            timeout=120)
    assert opened.returncode == 0 and "opened" in opened.stdout, opened.stdout + opened.stderr


def _late_binary(monkeypatch, tmp_path, script: str) -> None:
    """milvus-lite's own server binary, started through a shell that first runs `script`: a cold start on a loaded
    machine, where the process lives past milvus-lite's 0.5 s check long before it listens."""
    from milvus_lite.server import Server

    real = Server.milvus_bin.fget
    wrapper = tmp_path / "late-milvus"

    def late(server) -> str:
        wrapper.write_text(f'#!/bin/sh\n{script}\nexec "{real(server)}" "$@"\n')
        wrapper.chmod(0o755)
        return str(wrapper)

    monkeypatch.setattr(Server, "milvus_bin", property(late))


@pytest.mark.integration
def test_a_lite_server_slow_to_listen_is_waited_for(tmp_path, monkeypatch):
    """pymilvus' first call fails at once while nothing listens, whatever its timeout: the first test of a full run
    on a loaded machine failed so ("Fail connecting to server on unix:..."), twice in a day."""
    from millrace.config import load_settings
    from millrace.index.connect import connect

    _late_binary(monkeypatch, tmp_path, "sleep 3")
    client = connect(load_settings(home=tmp_path / "home"))
    assert client.list_collections() == []


@pytest.mark.integration
def test_a_lite_server_that_dies_before_listening_is_a_clear_error(tmp_path, monkeypatch):
    from millrace.config import ConfigError, load_settings
    from millrace.index.connect import connect

    _late_binary(monkeypatch, tmp_path, "sleep 1; exit 7")
    with pytest.raises(ConfigError, match="its server exited with code 7"):
        connect(load_settings(home=tmp_path / "home"))
