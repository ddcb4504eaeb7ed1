import pytest
from hypothesis import given
from hypothesis import strategies as st

from millrace.documents.records import DocSummary, Failure, SourceObject
from millrace.ledger.book import Ledger
from millrace.ledger.plan import plan_run
from millrace.pipeline import batch_size_for, make_batches, round_batch_size

pytestmark = pytest.mark.unit


def obj(name: str, fp: str = "1", size: int = 10) -> SourceObject:
    return SourceObject.make(f"file:///src/{name}", size, fp)


def test_batches_respect_count_and_bytes():
    objs = [obj(str(i), size=40) for i in range(10)]
    assert [len(b) for b in make_batches(objs, 4)] == [4, 4, 2]
    assert [len(b) for b in make_batches(objs, 100, max_batch_bytes=100)] == [2, 2, 2, 2, 2]
    assert make_batches([], 4) == []


def test_automatic_batch_size_keeps_every_slot_busy_and_batches_bounded():
    assert batch_size_for(5183, 0, parallel=2) == 256  # capped: ~21 batches for SciFact on one 2-thread worker
    assert batch_size_for(1000, 0, parallel=2) == 125  # four batches per slot
    assert batch_size_for(3, 0, parallel=16) == 1
    assert batch_size_for(1000, 7, parallel=2) == 7  # an explicit setting wins


@given(n=st.integers(1, 20_000), slots=st.integers(1, 64))
def test_small_runs_pay_per_batch_costs_once_per_slot_not_four_times(n, slots):
    size = batch_size_for(n, 0, parallel=slots)
    batches = -(-n // size)
    assert 1 <= size <= 256
    assert batches >= min(n, slots) or size == 256  # every slot has a batch, as long as batches are not capped
    if n >= 4 * slots * 32:  # big runs keep four batches per slot for a short tail
        assert size == min(256, -(-n // (4 * slots)))
    else:  # small ones: batches of fewer than 32 documents only where it takes them to fill the slots
        assert size >= min(32, n // slots) or size == 256


@given(n=st.integers(1, 20_000), slots=st.integers(1, 64), most=st.integers(1, 512))
def test_a_draining_round_runs_in_the_fewest_waves_of_equal_batches(n, slots, most):
    size = round_batch_size(n, 0, parallel=slots, most=most)
    sizes = [len(b) for b in make_batches([obj(str(i)) for i in range(n)], size)]
    assert sum(sizes) == n and 1 <= size <= most
    # As few waves over the slots as the cap allows, and within them the smallest batches that cover the round
    # (a wave lasts as long as its largest batch), all of one size but the last.
    waves = -(-n // (slots * most))
    assert -(-len(sizes) // slots) == waves
    assert (size - 1) * slots * waves < n <= size * slots * waves
    assert set(sizes[:-1]) <= {size}
    assert round_batch_size(n, 7, parallel=slots) == 7  # an explicit setting wins


def test_plan_skips_unchanged_and_finds_deleted(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.sqlite")
    a, b, gone = obj("a"), obj("b"), obj("gone")
    for o in (a, b, gone):
        ledger.record_indexed("c", DocSummary(doc_id=o.doc_id, source_uri=o.uri, fingerprint=o.fingerprint,
                                              content_hash="h", chunks=1), "v1")
    other = SourceObject.make("file:///elsewhere/x", 1, "1")
    ledger.record_indexed("c", DocSummary(doc_id=other.doc_id, source_uri=other.uri, fingerprint="1",
                                          content_hash="h"), "v1")
    plan = plan_run([a, obj("b", fp="2"), obj("new")], "file:///src", ledger, "c", "v1")
    assert [o.uri for o in plan.skipped] == [a.uri]
    assert sorted(o.uri.rsplit("/", 1)[1] for o in plan.todo) == ["b", "new"]
    assert [r["doc_id"] for r in plan.gone] == [gone.doc_id]  # not the document of another source
    assert len(plan_run([a], "file:///src", ledger, "c", "v2").todo) == 1  # new pipeline version


def test_failed_documents_are_skipped_unless_retried(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.sqlite")
    a = obj("a")
    ledger.record_failed("c", Failure(doc_id=a.doc_id, source_uri=a.uri, fingerprint="1", stage="extract",
                                      reason="corrupt"), "v1")
    assert plan_run([a], "file:///src", ledger, "c", "v1").skipped == [a]
    assert plan_run([a], "file:///src", ledger, "c", "v1", retry_failed=True).todo == [a]
    assert ledger.counts("c") == {"failed": 1}


def test_ledger_url_setting_points_the_ledger_anywhere(tmp_path):
    from millrace.config import Settings

    url = f"sqlite:///{tmp_path}/elsewhere/ledger.db"
    s = Settings(home=tmp_path / "home", ledger_url=url)
    assert s.resolved_ledger_url == url
    assert Settings(home=tmp_path / "home").resolved_ledger_url.endswith("/home/ledger.sqlite")
    ledger = Ledger(s.resolved_ledger_url)
    ledger.record_indexed("c", DocSummary(doc_id="d", source_uri="u", fingerprint="f", content_hash="h", chunks=2), "v")
    assert Ledger(url).chunk_total("c") == 2 and (tmp_path / "elsewhere" / "ledger.db").is_file()


def test_a_filtered_or_named_scope_never_reaches_documents_outside_it(tmp_path):
    from millrace.ledger.plan import Scope

    ledger = Ledger(f"sqlite:///{tmp_path}/l.sqlite")
    names = ["a.md", "b.txt", "sub/c.md", "sub/d.txt", "subway/e.md"]
    for name in names:
        o = obj(name)
        ledger.record_indexed("c", DocSummary(doc_id=o.doc_id, source_uri=o.uri, fingerprint="1", content_hash="h",
                                              chunks=1), "v1")
    gone = lambda scope: sorted(r["source_uri"].removeprefix("file:///src/") for r in  # noqa: E731
                                plan_run([], scope, ledger, "c", "v1").gone)
    assert gone(Scope(source="file:///src")) == sorted(names)
    assert gone(Scope(source="file:///src", include=["*.md"])) == ["a.md", "sub/c.md", "subway/e.md"]
    assert gone(Scope(source="file:///src", exclude=["*.md"])) == ["b.txt", "sub/d.txt"]
    assert gone(Scope(source="file:///src/sub")) == ["sub/c.md", "sub/d.txt"]  # not subway/
    assert gone(Scope(source="file:///src", objects=["b.txt", "missing.pdf"])) == ["b.txt"]
    assert gone(Scope(source="file:///src/sub/c.md")) == ["sub/c.md"]


def test_transient_failures_are_retried_by_later_runs_with_backoff_and_permanent_ones_are_not(tmp_path):
    from millrace.index.staging import backoff_s

    ledger = Ledger(f"sqlite:///{tmp_path}/l.sqlite")
    t, p = obj("timeout.pdf"), obj("encrypted.pdf")
    for o, reason in ((t, "timeout"), (p, "encrypted")):
        ledger.record_failed("c", Failure(doc_id=o.doc_id, source_uri=o.uri, fingerprint="1", stage="extract",
                                          reason=reason), "v1")
    with ledger.engine.begin() as conn:
        from millrace.ledger.book import documents

        conn.execute(documents.update().where(documents.c.doc_id == t.doc_id).values(next_attempt_at=1000.0))
    early = plan_run([t, p], "file:///src", ledger, "c", "v1", now=999.0)
    assert (early.todo, early.waiting, early.skipped) == ([], [t], [p])
    due = plan_run([t, p], "file:///src", ledger, "c", "v1", now=1000.0)
    assert (due.todo, due.skipped) == ([t], [p])
    assert plan_run([t, p], "file:///src", ledger, "c", "v1", retry_failed=True, now=0.0).todo == [t, p]
    assert plan_run([t, obj("encrypted.pdf", fp="2")], "file:///src", ledger, "c", "v1", now=0.0).todo[0].uri == p.uri
    assert [backoff_s(n, 300, 3600) for n in range(1, 7)] == [0, 300, 600, 1200, 2400, 3600]
