"""The threads Tika's in-process parses run on, reused from parse to parse, each parse bounded by a timeout."""

from __future__ import annotations

import os
import queue
import threading
import time

_threads: set[threading.Thread] = set()
_idle: list[_ParseThread] = []
_idle_lock = threading.Lock()


class _ParseThread:
    """A thread that runs parses one after another. Attaching a thread to the JVM costs about what parsing a small
    document does, so a new thread per parse doubled extraction's CPU (4.1 against 2.0 ms a small text file). One
    whose parse overran is abandoned: it ends when that parse returns, and a new one takes its place."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="tika-parse", daemon=True)
        _threads.add(self.thread)
        self.thread.start()

    def _loop(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                run, done = job
                run()
                done.set()
        finally:
            _threads.discard(threading.current_thread())


def run(job, timeout: float) -> bool:
    """`job` on an idle parse thread; False when it overran `timeout` (its thread is then abandoned)."""
    with _idle_lock:
        runner = _idle.pop() if _idle else None
    runner = runner or _ParseThread()
    done = threading.Event()
    runner.jobs.put((job, done))
    if done.wait(timeout):
        with _idle_lock:
            _idle.append(runner)
        return True
    runner.jobs.put(None)
    return False


def drain(timeout: float = 30.0) -> None:
    """At exit, let parses still in Java finish (bounded): a thread returning from Java into a finalizing
    interpreter aborts the process ("FATAL: exception not rethrown"). One truly hung stays in Java, harmlessly."""
    with _idle_lock:
        for runner in _idle:
            runner.jobs.put(None)
        _idle.clear()
    deadline = time.monotonic() + timeout
    for thread in list(_threads):
        thread.join(max(0.0, deadline - time.monotonic()))


def _forget_in_child() -> None:
    # A forked child has none of its parent's threads: their queues would take parses that never run.
    _threads.clear()
    _idle.clear()


os.register_at_fork(after_in_child=_forget_in_child)
