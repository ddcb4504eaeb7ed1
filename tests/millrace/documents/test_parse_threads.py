"""Tika's parse threads: reused while parses finish in time, replaced when one overruns, all ended by drain()."""

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millrace.documents import parse_threads

pytestmark = pytest.mark.unit


def _ran_on() -> tuple[dict, callable]:
    seen: dict = {}

    def job() -> None:
        seen["thread"] = threading.current_thread()

    return seen, job


def test_parses_in_time_reuse_one_thread():
    threads = set()
    for _ in range(40):
        seen, job = _ran_on()
        assert parse_threads.run(job, timeout=10)
        threads.add(seen["thread"])
    assert len(threads) == 1
    assert threads.pop() is not threading.current_thread()


def test_an_overrun_is_abandoned_and_the_next_parse_gets_a_new_thread():
    release = threading.Event()
    stuck: dict = {}

    def hang() -> None:
        stuck["thread"] = threading.current_thread()
        release.wait(30)

    assert not parse_threads.run(hang, timeout=0.2)
    seen, job = _ran_on()
    assert parse_threads.run(job, timeout=10)
    assert seen["thread"] is not stuck["thread"]
    release.set()
    stuck["thread"].join(10)
    assert not stuck["thread"].is_alive(), "an abandoned thread ends once its parse returns"


@settings(max_examples=15, deadline=None)
@given(callers=st.integers(1, 4), jobs=st.integers(1, 12))
def test_concurrent_callers_each_get_a_thread_of_their_own(callers, jobs):
    running, lock, overlap = set(), threading.Lock(), []

    def job() -> None:
        me = threading.current_thread()
        with lock:
            assert me not in running, "two parses at once on one thread"
            running.add(me)
            overlap.append(len(running))
        threading.Event().wait(0.001)
        with lock:
            running.discard(me)

    results: list[bool] = []

    def caller() -> None:
        results.extend(parse_threads.run(job, timeout=10) for _ in range(jobs))

    pool = [threading.Thread(target=caller) for _ in range(callers)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert results == [True] * (callers * jobs)
    assert len(overlap) == callers * jobs and max(overlap) <= callers


def test_drain_ends_every_idle_thread():
    seen, job = _ran_on()
    assert parse_threads.run(job, timeout=10)
    parse_threads.drain(timeout=10)
    assert not seen["thread"].is_alive()
    again, job = _ran_on()
    assert parse_threads.run(job, timeout=10), "a parse after drain starts a new thread"
    assert again["thread"] is not seen["thread"]
