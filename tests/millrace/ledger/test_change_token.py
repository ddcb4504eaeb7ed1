"""LedgerWatch: a token that changes after every commit to the ledger, by this process or another, and stays put
while nothing commits; None where it cannot tell (no SQLite file yet, not SQLite)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.ledger.book import Ledger
from millrace.ledger.change_token import LedgerWatch

pytestmark = pytest.mark.unit
_homes = itertools.count()


def _url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'a home #1 + café' / 'ledger.sqlite'}"


def test_no_file_yet_then_every_commit_moves_the_token(tmp_path):
    url = _url(tmp_path)
    watch = LedgerWatch(url)
    assert watch.token() is None  # nothing committed yet: the caller reads (and finds) nothing
    ledger = Ledger(url)
    first = watch.token()
    assert first is not None and watch.token() == first  # looking is not a change
    ledger.start_run("docs", "run-1", "s3://bucket/a b.pdf", {})
    second = watch.token()
    assert second != first and watch.token() == second
    ledger.index_version("docs")  # a read commits nothing
    assert watch.token() == second
    # another process's commit
    code = ("import sys; from millrace.ledger.book import Ledger; "
            "Ledger(sys.argv[1]).set_run_state('run-1', 'done')")
    subprocess.run([sys.executable, "-c", code, url], check=True)
    assert watch.token() != second
    watch.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(["commit", "read", "look"]), min_size=1, max_size=12))
def test_the_token_moves_exactly_when_something_committed(tmp_path, steps):
    url = f"sqlite:///{tmp_path / f'home {next(_homes)}' / 'ledger.sqlite'}"  # a fresh ledger per example
    ledger, watch = Ledger(url), LedgerWatch(url)
    before, n = watch.token(), 0
    for step in steps:
        if step == "commit":
            n += 1
            ledger.start_run("c", f"r{n}", "", {})
        elif step == "read":
            ledger.index_version("c")
        now = watch.token()
        assert (now != before) == (step == "commit"), (step, before, now)
        before = now
    watch.close()


def test_other_databases_cannot_tell():
    assert LedgerWatch("postgresql://u@db/ledger").token() is None
