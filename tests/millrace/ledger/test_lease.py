"""The collection lease: one writer at a time, a clear wait, expiry after a killed run."""

import subprocess
import sys
import threading
import time

import pytest

from millrace.ledger.book import Ledger
from millrace.ledger.lease import Lease, LeaseLostError, LeaseTimeoutError, current

pytestmark = pytest.mark.unit


@pytest.fixture()
def ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path}/ledger.sqlite")


def test_a_second_run_waits_saying_for_whom_then_gets_the_lease(ledger):
    said = []
    first = Lease(ledger, "c", "run-1", "ingest of /docs", ttl_s=5).acquire()
    with pytest.raises(LeaseTimeoutError, match="run-1"):
        Lease(ledger, "c", "run-2", "ingest of /other", ttl_s=5, wait_s=0.5, on_wait=said.append).acquire()
    assert said and "run-1" in said[0] and "ingest of /docs" in said[0]
    assert current(ledger, "c")["run_id"] == "run-1"
    threading.Timer(0.5, first.release).start()
    second = Lease(ledger, "c", "run-2", "ingest of /other", ttl_s=5, wait_s=10, on_wait=said.append).acquire()
    assert second.waited_s > 0.3 and current(ledger, "c")["run_id"] == "run-2"
    second.release()
    assert current(ledger, "c") is None
    Lease(ledger, "other-collection", "run-3", "x", ttl_s=5, wait_s=0).acquire().release()  # independent


def test_a_lease_is_renewed_while_its_run_lives(ledger):
    with Lease(ledger, "c", "run-1", "x", ttl_s=3):
        time.sleep(7)  # more than two TTLs: only renewals (every second) keep it
        with pytest.raises(LeaseTimeoutError):
            Lease(ledger, "c", "run-2", "x", ttl_s=3, wait_s=0.2).acquire()


def test_an_expired_lease_is_taken_over_and_the_old_holder_learns_it_lost(ledger):
    old = Lease(ledger, "c", "run-1", "x", ttl_s=0.6).acquire()
    old._stop.set()  # as if its process hung: no more renewals
    old._thread.join()
    new = Lease(ledger, "c", "run-2", "x", ttl_s=0.6, wait_s=5).acquire()
    assert current(ledger, "c")["run_id"] == "run-2"
    assert old.renew() is False
    with pytest.raises(LeaseLostError, match="another run took it"):
        old.check()
    new.release()


def test_the_lease_of_a_killed_process_on_this_host_is_not_waited_out(ledger, tmp_path):
    code = ("import sys, os, signal; sys.path.insert(0, %r); from millrace.ledger.book import Ledger; "
            "from millrace.ledger.lease import Lease; Lease(Ledger(%r), 'c', 'dead-run', 'x', ttl_s=3600).acquire(); "
            "os.kill(os.getpid(), signal.SIGKILL)") % (str(__import__("pathlib").Path(__file__).parents[3]),
                                                       f"sqlite:///{tmp_path}/ledger.sqlite")
    done = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert done.returncode == -9 and current(ledger, "c")["run_id"] == "dead-run"
    Lease(ledger, "c", "run-2", "x", ttl_s=5, wait_s=2).acquire().release()
