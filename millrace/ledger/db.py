"""Engines for the tables that live beside the ledger's in its database but belong to one component each (the
relay's event log, the change queue): one engine per URL and table set in a process."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from millrace.retry import with_retries

_engines: dict[tuple[str, int], Engine] = {}
_engines_lock = threading.Lock()
_T = TypeVar("_T")
# Values per SQL IN list: far below SQLite's and PostgreSQL's limits on bound parameters in one statement.
IN_LIST_SIZE = 500


def in_lists(values: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """`values` in slices of IN_LIST_SIZE, one IN list each."""
    for i in range(0, len(values), IN_LIST_SIZE):
        yield values[i:i + IN_LIST_SIZE]


def engine_for(url: str, meta: MetaData) -> Engine:
    """The engine for `url` with `meta`'s tables created. On SQLite its transactions take the write lock at BEGIN
    (see begin_immediate) and wait up to 60 s for another writer instead of failing."""
    with _engines_lock:
        engine = _engines.get((url, id(meta)))
        if engine is None:
            kwargs: dict = {}
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"timeout": 60}  # flows write the same file: wait for them, don't fail
            engine = create_engine(url, future=True, **kwargs)
            if engine.dialect.name == "sqlite":
                write_ahead_log(engine)
                begin_immediate(engine)
            create_schema(engine, meta)
            _engines[(url, id(meta))] = engine
        return engine


# A process that lost the race to create a table waits a moment and looks again (see create_schema).
SCHEMA_RACE_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)


def create_schema(engine: Engine, meta: MetaData, migrate: Callable[[Engine], None] | None = None) -> None:
    """`meta`'s tables (and `migrate`'s columns) created where missing, when other processes may be doing the same.

    `make server` starts the API, the relay, the workers and a flow run at once on a fresh home, and each creates
    the tables it uses. create_all checks, then creates: two processes both find a table missing and the second
    CREATE fails ("table documents already exists"; on Postgres also a duplicate pg_type row). The loser looks
    again, now finds the table, and goes on."""

    def create() -> None:
        meta.create_all(engine)
        if migrate is not None:
            migrate(engine)

    with_retries(create, SCHEMA_RACE_DELAYS, "creating the ledger database's tables", (DBAPIError,),
                 classify=_lost_the_race)


def _lost_the_race(exc: BaseException) -> bool:
    message = str(getattr(exc, "orig", None) or exc).lower()
    return "already exists" in message or "duplicate" in message


def write_ahead_log(engine: Engine) -> None:
    """SQLite in WAL mode (a property of the file; asking again costs nothing). In the default rollback mode a commit
    waits until no other process is reading, and every reader waits out a commit: the relay's queue writes, the drain's
    rounds, the API's watermark and `millrace status` all share one file, and in a 2,000-upload burst py-spy found the
    relay in COMMIT in 38 % of its samples. In WAL mode readers and the one writer do not wait for each other. Commits stay
    durable: synchronous stays FULL, so each commit is on disk before the sender of a change is answered."""

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection, _record) -> None:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL").fetchall()
        except sqlite3.OperationalError:  # another process is switching it: the file is WAL for everyone after
            pass


def begin_immediate(engine: Engine) -> None:
    """SQLite transactions that take the write lock at BEGIN. Python's sqlite3 otherwise runs the SELECT of a
    read-compare-write outside the transaction, and two writers of the same row lose an update (an older event
    would win). SQLAlchemy's documented recipe; these engines are the components' own, the ledger's is untouched."""

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
