"""Fault injection and crash points for the tests, installed from outside the product by wrapping its functions.

Installed in the pytest process (tests/conftest.py), in the workers of every LocalCluster the tests start (a Dask
preload: `distributed.worker.preload`, set by tests/conftest.py), and in a `millrace` subprocess whose PYTHONPATH
holds tests/hooks/site (its sitecustomize). Each wrapper reads the environment when it is called, so a test arms it
with an environment variable for the processes it starts:

- MILLRACE_TEST_FAULT_DIR: a file <dir>/<doc_id> holding a reason makes that document's next extraction fail with
  it, once ("timeout", "encrypted", ...). Two reasons act through the real JVM, inside Tika's timed parse thread,
  and persist until the test removes the marker (a process cannot reliably consume the marker of a fault that
  kills it, and a poison document is poison on every attempt): "hang" sleeps in Java past the parse timeout,
  "jvm_exit" halts the JVM, which takes its process with it as a JVM crash would.
- MILLRACE_TEST_CRASH_AT: die as SIGKILL would, at "kill-after-upsert" (once a batch's chunks are written to Milvus,
  before the run commits) or "kill-during-commit" (after a commit page's old chunks are removed from Milvus, before
  the ledger rows that make its new ones current)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from pathlib import Path

FAULT_DIR = "MILLRACE_TEST_FAULT_DIR"
CRASH_AT = "MILLRACE_TEST_CRASH_AT"
JVM_FAULTS = ("hang", "jvm_exit")
_installed = False


def _marker(doc_id: str) -> Path | None:
    folder = os.environ.get(FAULT_DIR)
    return Path(folder) / doc_id if folder else None


def _die_at(point: str) -> None:
    if os.environ.get(CRASH_AT) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _injected(obj) -> None:
    from millrace.documents.extract import ExtractError

    marker = _marker(obj.doc_id)
    if marker is None:
        return
    try:
        reason = marker.read_text().strip() or "timeout"
        if reason in JVM_FAULTS:  # left for the parse thread
            return
        marker.unlink()
    except FileNotFoundError:  # none, or another worker took it
        return
    raise ExtractError(reason, "injected fault")


def _in_the_jvm(extractor, doc_id: str) -> None:
    marker = _marker(doc_id)
    try:
        kind = marker.read_text().strip() if marker else ""
    except FileNotFoundError:
        return
    if kind not in JVM_FAULTS:
        return
    from millrace.documents.extract import _Jvm

    _Jvm.get_parser(extractor.jar, extractor.settings.tika_heap)
    from java.lang import Runtime, Thread

    if kind == "hang":  # bounded, so the abandoned thread ends before its process does (parse_threads.drain)
        Thread.sleep(int(extractor.settings.parse_timeout_s * 1000) + 5000)
    else:
        Runtime.getRuntime().halt(134)


def install() -> None:
    """Wrap the product's functions once per process; a no-op while no variable arms them."""
    global _installed
    if _installed:
        return
    _installed = True
    from millrace import pipeline
    from millrace.documents.extract import TikaJvmExtractor
    from millrace.index.store import MilvusStore
    from millrace.ledger.book import Ledger

    extract = pipeline.extract

    @functools.wraps(extract)
    def extract_with_faults(obj, data, settings):
        _injected(obj)
        return extract(obj, data, settings)

    pipeline.extract = extract_with_faults

    parse = TikaJvmExtractor._parse

    @functools.wraps(parse)
    def parse_with_faults(self, obj, data, result):  # runs in the timed parse thread, as the fault must
        _in_the_jvm(self, obj.doc_id)
        return parse(self, obj, data, result)

    TikaJvmExtractor._parse = parse_with_faults

    upsert = MilvusStore.upsert

    @functools.wraps(upsert)
    def upsert_then_die(self, *args, **kwargs):
        written = upsert(self, *args, **kwargs)
        _die_at("kill-after-upsert")
        return written

    MilvusStore.upsert = upsert_then_die

    set_run_state, upsert_rows = Ledger.set_run_state, Ledger.upsert_rows
    committing: set[int] = set()

    @functools.wraps(set_run_state)
    def note_commit(self, run_id, state):
        if state == "committing":
            committing.add(id(self))
        return set_run_state(self, run_id, state)

    @functools.wraps(upsert_rows)
    def die_before_rows(self, conn, rows):
        if id(self) in committing:  # staging.commit: this page's old chunks are gone from Milvus already
            _die_at("kill-during-commit")
        return upsert_rows(self, conn, rows)

    Ledger.set_run_state, Ledger.upsert_rows = note_commit, die_before_rows


def dask_setup(worker=None) -> None:
    """As a Dask preload: install in the worker process before its first task."""
    install()


class Faults:
    """One test's markers in the session's fault folder. MILLRACE_TEST_FAULT_DIR is set once, by tests/conftest.py,
    before any process starts, so that processes started before the test (the session's Dask workers) see it too;
    tests share the folder, and a test sees and clears only the markers it armed."""

    def __init__(self) -> None:
        self.folder = Path(os.environ[FAULT_DIR])
        self.ids: set[str] = set()

    def arm(self, doc_id: str, reason: str) -> None:
        self.ids.add(doc_id)
        (self.folder / doc_id).write_text(reason)

    def disarm(self, doc_id: str) -> None:
        (self.folder / doc_id).unlink(missing_ok=True)

    def armed(self) -> set[str]:
        """This test's markers that no extraction has consumed yet."""
        return {d for d in self.ids if (self.folder / d).exists()}

    @contextlib.contextmanager
    def set_aside(self):
        """No fault for the runs inside (a clean run of the same documents); the markers come back after."""
        aside = {d: (self.folder / d).read_text() for d in self.armed()}
        for doc_id in aside:
            self.disarm(doc_id)
        try:
            yield
        finally:
            for doc_id, reason in aside.items():
                self.arm(doc_id, reason)

    def clear(self) -> None:
        for doc_id in self.ids:
            self.disarm(doc_id)
