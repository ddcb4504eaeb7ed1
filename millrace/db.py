"""Engines for the tables that live beside the ledger's in its database but belong to one component each (the
relay's event log, the change queue): one engine per URL and table set in a process."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine

_engines: dict[tuple[str, int], Engine] = {}
_engines_lock = threading.Lock()


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
                begin_immediate(engine)
            meta.create_all(engine)
            _engines[(url, id(meta))] = engine
        return engine


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
