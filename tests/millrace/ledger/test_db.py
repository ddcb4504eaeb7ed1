"""The ledger's database on a fresh home, opened by every service of `make server` at the same moment."""

import multiprocessing as mp

import pytest
from sqlalchemy import inspect

pytestmark = pytest.mark.unit

OPENERS = 6


def _open(url: str, barrier, errors) -> None:
    from millrace.events import queue as changequeue, log as eventlog
    from millrace.ledger.db import engine_for
    from millrace.ledger.book import Ledger

    barrier.wait(30)
    try:  # what the API, the relay, the worker's flow runs and `millrace status` each do first
        Ledger(url)
        engine_for(url, changequeue.meta)
        engine_for(url, eventlog.meta)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which names it
        errors.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


@pytest.mark.parametrize("attempt", range(2))
def test_processes_opening_a_fresh_ledger_at_once_all_get_its_tables(tmp_path, attempt):
    """`make server` starts the API, the relay, the workers and a flow run together on an empty MILLRACE_HOME: each
    creates the tables it needs. A check-then-create raced ("table documents already exists") and the API died."""
    url = f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(OPENERS), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, barrier, errors)) for _ in range(OPENERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, failures
    assert all(p.exitcode == 0 for p in procs)
    from millrace.events import queue as changequeue, log as eventlog
    from millrace.ledger.book import meta
    from sqlalchemy import create_engine

    tables = set(inspect(create_engine(url)).get_table_names())
    assert {t.name for m in (meta, changequeue.meta, eventlog.meta) for t in m.sorted_tables} <= tables


def test_a_reader_in_the_middle_of_a_read_does_not_hold_up_a_queue_write(tmp_path):
    """The relay answers a sender only once its changes are committed, while the drain, the API's watermark and
    `millrace status` read the same file. With SQLite's default rollback journal a commit waits for every open read
    to end (here: 60 s, then "database is locked"); the ledger's engines put the file in WAL mode, where the write
    commits at once and the reader keeps the snapshot it started with."""
    import sqlite3

    from millrace.events.queue import Change, ChangeQueue
    from millrace.ledger.book import Ledger

    path = tmp_path / "a home #1" / "ledger.sqlite"
    Ledger(f"sqlite:///{path}")
    queue = ChangeQueue(f"sqlite:///{path}")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM change_queue").fetchone() == (0,)  # holds a read snapshot
    queue.put([Change(collection="c", source="s3://bucket/docs", object="café #2.pdf")])
    assert reader.execute("SELECT count(*) FROM change_queue").fetchone() == (0,)  # its snapshot, unchanged
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM change_queue").fetchone() == (1,)
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
