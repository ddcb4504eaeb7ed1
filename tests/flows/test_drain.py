"""The draining run: queued changes of messy names become searchable and deletions leave the index, rounds grow
with the backlog, a change that arrives mid-round is not lost, transient failures retry then die with a reason."""

from pathlib import Path

import pytest

from flows.drain import drain
from millrace import clients
from millrace.documents.records import doc_id_for
from millrace.events.queue import Change
from millrace.search import Retriever
from millrace.uris import canonical_source_uri, path_to_uri

pytestmark = pytest.mark.integration

NAMES = ["café notes.txt", "C# + F# tips.md", "sub dir/Q&A #3.txt", "a+b=c.txt", "deep/er/ünïcode.md"]


def text(i: int, topic: str) -> str:
    return (f"Report {i} on the {topic}: the gauge at weir {i} read {i * 7 % 31} centimetres above normal and crew "
            f"{i % 5} inspected the {topic} sluice number {i} on the morning shift.")


def put(settings, folder: Path, rels, kind="created"):
    source = canonical_source_uri(str(folder))
    return clients.change_queue(settings).put(
        [Change(collection=settings.collection, source=source, object=r, kind=kind, origin="test") for r in rels])


def indexed(settings, folder: Path) -> dict[str, str]:
    """source_uri -> state of every ledger row under the folder."""
    rows = clients.ledger(settings).rows(settings.collection)
    return {r["source_uri"]: r["state"] for r in rows}


def drain_now(settings, **options):
    return drain(collection=settings.collection, options={"drain_idle_s": 0, **options})


def top_uri(settings, query: str) -> str | None:
    hits = Retriever(settings).search(query, k=1)
    return hits[0].source_uri if hits else None


def test_queued_changes_of_messy_names_become_searchable_and_deletions_leave(tmp_path, settings):
    folder = tmp_path / "docs"
    for i, rel in enumerate(NAMES):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text(i, "reservoir"))
    put(settings, folder, NAMES)
    summary = drain_now(settings)
    assert summary["changes"] == len(NAMES) and summary["done"] == len(NAMES)
    assert clients.change_queue(settings).stats(settings.collection).pending == 0
    states = indexed(settings, folder)
    assert {path_to_uri(folder / r): "indexed" for r in NAMES}.items() <= states.items()
    assert top_uri(settings, text(2, "reservoir")) == path_to_uri(folder / NAMES[2])

    (folder / NAMES[2]).unlink()
    (folder / NAMES[0]).write_text(text(0, "turbine hall"))
    put(settings, folder, [NAMES[2]], kind="removed")
    put(settings, folder, [NAMES[0]])
    drain_now(settings)
    states = indexed(settings, folder)
    assert states[path_to_uri(folder / NAMES[2])] == "deleted"
    assert top_uri(settings, text(0, "turbine hall")) == path_to_uri(folder / NAMES[0])
    assert clients.change_queue(settings).stats(settings.collection).pending == 0


def test_an_empty_queue_exits_at_once_without_a_round(settings):
    assert drain_now(settings)["rounds"] == 0


def test_rounds_take_everything_pending_up_to_the_cap(tmp_path, settings):
    folder = tmp_path / "many"
    folder.mkdir()
    rels = [f"note {i}.txt" for i in range(12)]
    for i, rel in enumerate(rels):
        (folder / rel).write_text(text(i, "canal"))
    put(settings, folder, rels)
    summary = drain_now(settings, drain_max_changes=5)
    assert (summary["rounds"], summary["changes"]) == (3, 12)  # 5 + 5 + 2: bounded rounds, nothing left
    totals = clients.change_queue(settings).round_totals(settings.collection)
    assert (totals["rounds"], totals["changes"], totals["last_changes"]) == (3, 12, 2)


def test_a_transient_failure_is_retried_after_its_backoff_and_one_that_keeps_failing_is_set_aside(tmp_path,
                                                                                                    settings,
                                                                                                    faults_armed):
    folder = tmp_path / "flaky"
    folder.mkdir()
    (folder / "flaky report.txt").write_text(text(1, "dam"))
    (folder / "fine.txt").write_text(text(2, "dam"))
    doc = doc_id_for(path_to_uri(folder / "flaky report.txt"))
    queue = clients.change_queue(settings)

    faults_armed.arm(doc, "timeout")  # the next extraction of this document times out, once
    put(settings, folder, ["flaky report.txt", "fine.txt"])
    summary = drain_now(settings, transient_backoff_s=0, drain_max_attempts=3)
    assert (summary["rounds"], summary["retrying"], summary["dead"]) == (2, 1, 0)  # due at once: retried, indexed
    assert set(indexed(settings, folder).values()) == {"indexed"} and queue.stats(settings.collection).pending == 0

    (folder / "flaky report.txt").write_text(text(3, "dam"))
    faults_armed.arm(doc, "timeout")
    put(settings, folder, ["flaky report.txt"])
    summary = drain_now(settings, drain_max_attempts=1)
    assert (summary["rounds"], summary["dead"]) == (1, 1)
    stats = queue.stats(settings.collection)
    assert (stats.pending, stats.dead) == (0, 1)
    dead = queue.entries(settings.collection, "dead")[0]
    assert (dead.object, dead.reason, dead.attempts) == ("flaky report.txt", "timeout", 1)
    # The failed new version keeps the previous one searchable.
    assert top_uri(settings, text(1, "dam")) == path_to_uri(folder / "flaky report.txt")

    put(settings, folder, ["flaky report.txt"])  # a new change revives it, and it indexes
    drain_now(settings)
    assert queue.stats(settings.collection).dead == 0
    assert top_uri(settings, text(3, "dam")) == path_to_uri(folder / "flaky report.txt")


def test_a_change_queued_as_the_lease_is_released_is_drained_by_the_same_run(tmp_path, settings, monkeypatch):
    """The relay sends no wake-up while a drain holds the lease, so the run itself must find a change that lands
    between its last look at the queue and its release (here: queued by the release itself, the worst moment)."""
    from millrace.events import drain as core
    from millrace.ledger.lease import Lease

    folder = tmp_path / "late"
    folder.mkdir()
    for i, rel in enumerate(["first.txt", "late #2.txt"]):
        (folder / rel).write_text(text(i, "spillway"))
    put(settings, folder, ["first.txt"])
    release, late = Lease.release, []

    def release_after_a_late_change(lease):
        if not late and lease.source == core.LEASE_SOURCE:  # the drain's own lease, not a round's inner one
            assert core.draining(clients.ledger(settings), settings.collection)  # the relay would not wake anyone
            late.append(put(settings, folder, ["late #2.txt"]))
        release(lease)

    monkeypatch.setattr(Lease, "release", release_after_a_late_change)
    summary = drain_now(settings)
    assert late and (summary["changes"], summary["done"]) == (2, 2), summary
    assert clients.change_queue(settings).stats(settings.collection).pending == 0
    assert indexed(settings, folder)[path_to_uri(folder / "late #2.txt")] == "indexed"
    assert not core.draining(clients.ledger(settings), settings.collection)


def test_the_next_round_is_planned_while_a_round_commits_and_an_object_changed_meanwhile_ends_current(
        tmp_path, settings, monkeypatch):
    """A round commits in the background while the next one is planned and processed. While round 1 stages, an
    object of its own is overwritten and a new one created; its commit is held here until round 2's ledger run
    exists, so the overlap must happen. Round 2 takes only the new object, a later round the overwrite, and the
    index ends equal to the folder, reconciliation passing in every round."""
    import time

    from sqlalchemy import select

    from millrace.index import staging
    from millrace.index import versions
    from millrace.ledger.book import runs

    folder = tmp_path / "overlap"
    folder.mkdir()
    first = ["weir #1.txt", "café 2.txt", "sub dir/3 + 4.txt"]
    for i, rel in enumerate(first):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text(i, "fish ladder"))
    put(settings, folder, first)
    ledger, stage, commit, seen = clients.ledger(settings), staging.stage_batch, staging.commit, []

    def round_runs() -> list[str]:
        with ledger.engine.connect() as conn:
            return sorted(conn.execute(select(runs.c.run_id).where(runs.c.run_id.like("%-r%-%"))).scalars())

    def stage_as_changes_arrive(*args, **kwargs):
        if not seen:  # round 1 read its files already: it indexes the old text of first[1]
            seen.append("staging")
            (folder / first[1]).write_text(text(9, "salmon run"))
            (folder / "late é.txt").write_text(text(8, "eel pass"))
            put(settings, folder, [first[1], "late é.txt"])
        return stage(*args, **kwargs)

    def commit_while_the_next_round_starts(store, ledger_, run_id):
        if len(seen) == 1:
            deadline = time.monotonic() + 120
            while len(round_runs()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            seen.append(round_runs())
        return commit(store, ledger_, run_id)

    monkeypatch.setattr(staging, "stage_batch", stage_as_changes_arrive)
    monkeypatch.setattr(staging, "commit", commit_while_the_next_round_starts)
    summary = drain_now(settings)
    assert len(seen) == 2 and len(seen[1]) == 2, seen  # round 2 was planned while round 1 was committing
    # Round 1 leaves the overwritten object queued (its newer version), so 4 entries leave the queue in 3 rounds.
    assert (summary["rounds"], summary["changes"], summary["done"]) == (3, 5, 4), summary
    assert clients.change_queue(settings).stats(settings.collection).pending == 0
    states = indexed(settings, folder)
    assert {path_to_uri(folder / r) for r in [*first, "late é.txt"]} == {u for u, s in states.items() if s == "indexed"}
    assert top_uri(settings, text(9, "salmon run")) == path_to_uri(folder / first[1])
    assert top_uri(settings, text(8, "eel pass")) == path_to_uri(folder / "late é.txt")
    physical = versions.active_physical(settings)
    store = clients.milvus_store(settings.model_copy(update={"collection": physical}))
    assert store.count() == ledger.chunk_total(physical) > 0
