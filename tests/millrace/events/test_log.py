"""The relay's event log in the ledger database: handled deliveries and the last event of each object."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.config import Settings
from millrace.events.log import MESSAGE_RETENTION_S, EventLog, last_event, open_eventlog
from millrace.events.s3 import S3Change
from millrace.ledger.book import Ledger

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 21, 10, tzinfo=timezone.utc)


def change(key: str, kind: str = "created", seq: str = "", t: int = 0, bucket: str = "docs", **kw) -> S3Change:
    return S3Change(bucket=bucket, key=key, kind=kind, sequencer=seq, event_time=T0 + timedelta(seconds=t),
                    message_id=kw.pop("message_id", f"m-{key}-{seq}-{t}"), **kw)


@pytest.fixture()
def log(tmp_path) -> EventLog:
    return EventLog(f"sqlite:///{tmp_path / 'ledger.sqlite'}")


def test_a_delivery_is_seen_only_once_remembered(log):
    assert not log.seen("m1")
    log.remember(["m1", "m1"])
    log.remember(["m1"])  # remembering twice is harmless
    assert log.seen("m1") and not log.seen("m2")


def test_old_deliveries_are_forgotten(log):
    log.remember(["old"], now=1000.0)
    log.remember(["new"], now=1000.0 + MESSAGE_RETENTION_S + 1)
    assert not log.seen("old") and log.seen("new")


def test_last_event_of_an_object(log):
    assert log.last_event("docs", "a b.txt") is None
    log.record([change("a b.txt", seq="01", size=3, etag="e1", event_name="ObjectCreated:Put")], batch_id="b1")
    row = log.last_event("docs", "a b.txt")
    assert (row["event"], row["etag"], row["size"], row["batch_id"], row["event_name"]) == (
        "created", "e1", 3, "b1", "ObjectCreated:Put")
    assert datetime.fromisoformat(row["event_time"]) == T0
    log.record([change("a b.txt", "removed", seq="02", t=1)], batch_id="b2")
    assert (log.last_event("docs", "a b.txt")["event"], log.last_event("docs", "a b.txt")["batch_id"]) == (
        "removed", "b2")
    assert log.last_event("other", "a b.txt") is None


def test_a_late_older_event_does_not_overwrite_a_newer_one(log):
    log.record([change("k", "removed", seq="0B")])
    log.record([change("k", "created", seq="0A")])  # delivered late: it happened before the delete
    assert log.last_event("docs", "k")["event"] == "removed"


@given(st.permutations([("created", "01", 0), ("removed", "02", 1), ("created", "03", 2), ("removed", "0A", 3)]),
       st.integers(1, 4))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_arrival_order_ends_with_the_latest_event(tmp_path_factory, order, split):
    log = EventLog(f"sqlite:///{tmp_path_factory.mktemp('log') / 'ledger.sqlite'}")
    changes = [change("Übersicht Mai.docx", kind, seq, t) for kind, seq, t in order]
    for start in range(0, len(changes), split):  # arriving in batches of `split`
        log.record(changes[start:start + split])
    row = log.last_event("docs", "Übersicht Mai.docx")
    assert (row["event"], row["sequencer"]) == ("removed", "0A")


def test_it_shares_the_ledger_database_without_touching_the_ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("MILLRACE_HOME", str(tmp_path / "home"))
    settings = Settings()
    ledger = Ledger(settings.resolved_ledger_url)
    open_eventlog(settings).record([change("x.pdf")])
    assert last_event(settings, "docs", "x.pdf")["event"] == "created"
    assert ledger.counts("millrace") == {} or not any(ledger.counts("millrace").values())
    from sqlalchemy import inspect

    tables = set(inspect(ledger.engine).get_table_names())
    assert {"relay_messages", "s3_last_events", "documents"} <= tables


def test_concurrent_writers_of_one_key(log):
    errors = []

    def write(i: int) -> None:
        try:
            log.record([change("hot.txt", seq=format(i, "04X"), t=i)])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert log.last_event("docs", "hot.txt")["sequencer"] == "0007"
