"""Milvus Lite's index by size (millrace.index.lite_index): the run that finds the collection past the threshold copies it
into an IVF_FLAT collection and swaps it in, under searches that never fail nor come back empty; nothing is
re-embedded, duplicated or lost, and the next runs neither copy again nor change a thing."""

import time
from urllib.parse import unquote

import pytest

from flows.ingest import ingest
from millrace import clients
from millrace.config import load_settings
from millrace.index import versions
from millrace.index.connect import nlist_for, nprobe_for
from millrace.search import Retriever
from tests.flows.test_rebuild import QUERIES, SearchLoop

pytestmark = pytest.mark.integration


def test_a_lite_collection_past_the_threshold_moves_to_ivf_under_searches(sample_dir, settings, monkeypatch):
    monkeypatch.setenv("MILLRACE_LITE_IVF_ROWS", "0")  # never: the first run builds the FLAT collection
    messy = sample_dir / "Q3 réunion #2 + notes" / "café menu (final).md"  # copied by content, whatever its name
    messy.parent.mkdir()
    messy.write_text("# Café menu\n\nThe flat white costs four euros; the croissant comes with apricot jam.\n")
    logical = settings.collection
    first = ingest(source=str(sample_dir), collection=logical)
    assert first["reconciled"] and "reindexed" not in first and first["collection"] == logical
    flat = clients.milvus_store(settings, logical)
    rows = flat.count()
    assert rows > 0 and flat.vector_index()["index_type"] == "FLAT"
    retriever = Retriever(settings)
    before = {q: [h.chunk_id for h in retriever.search(q, k=3, mode="dense")] for q in QUERIES}

    monkeypatch.setenv("MILLRACE_LITE_IVF_ROWS", str(rows))  # reached exactly: the next run moves it
    loop = SearchLoop(lambda q: retriever.search(q, k=3))
    loop.start()
    try:
        second = ingest(source=str(sample_dir), collection=logical)
        time.sleep(1)  # searches after the swap
    finally:
        loop.stop.set()
        loop.join(30)

    new = f"{logical}__v1"
    moved = second["reindexed"]
    assert (moved["from"], moved["to"], moved["index"], moved["rows"]) == (logical, new, "IVF_FLAT", rows), moved
    assert second["processed"] == 0 and second["reconciled"]  # nothing changed at the source: nothing re-embedded
    assert versions.active_physical(settings) == new
    assert {v.physical: v.state for v in versions.registry(settings)} == {logical: "previous", new: "active"}
    ivf = clients.milvus_store(settings, new)
    index = ivf.vector_index()
    assert index["index_type"] == "IVF_FLAT" and int(index["nlist"]) == nlist_for(rows) == moved["nlist"]
    assert ivf.dense_params() == {"nprobe": nprobe_for(nlist_for(rows))}
    assert ivf.count() == rows == flat.count()  # the old one is kept, whole, for a rollback
    assert ivf.chunk_ids() == flat.chunk_ids()
    hit = Retriever(settings).search("how much is a flat white", k=1, mode="dense")[0]
    assert hit.collection == new and unquote(hit.source_uri).endswith("Q3 réunion #2 + notes/café menu (final).md"), hit
    ledger = clients.ledger(settings)
    assert ledger.counts(new) == ledger.counts(logical) and ledger.chunk_total(new) == rows

    assert loop.outcomes("failed") == [] and loop.outcomes("empty") == [], loop.results[-5:]
    served = [c for _, c in loop.results]
    assert set(served) == {logical, new} and served == sorted(served, key=lambda c: c == new)
    after = {q: [h.chunk_id for h in Retriever(settings).search(q, k=3, mode="dense")] for q in QUERIES}
    assert after == before  # a collection this small is searched exhaustively: the flat scan's neighbours

    # The index is pinned for the new collection: later runs write it, and neither copy again nor change a thing.
    third = ingest(source=str(sample_dir), collection=logical)
    assert third["collection"] == new and "reindexed" not in third and third["processed"] == 0
    assert third["reconciled"] and ivf.count() == rows
    (sample_dir / "release-notes.md").write_text("# Release notes\n\nThe dashboard now speaks Welsh.\n")
    fourth = ingest(source=str(sample_dir), collection=logical)
    assert fourth["collection"] == new and fourth["processed"] == 1 and fourth["reconciled"]
    assert "reindexed" not in fourth and ivf.vector_index()["index_type"] == "IVF_FLAT"
    assert clients.milvus_store(settings, logical).count() == rows  # the FLAT one is not written any more


def test_an_index_the_user_chose_is_kept_however_large_and_the_default_never_moves(sample_dir, settings,
                                                                                 monkeypatch):
    monkeypatch.delenv("MILLRACE_LITE_IVF_ROWS", raising=False)
    default = ingest(source=str(sample_dir), collection=settings.collection)
    assert default["reconciled"] and "reindexed" not in default  # off unless set: Lite 2.5.1's IVF costs recall

    monkeypatch.setenv("MILLRACE_LITE_IVF_ROWS", "1")
    monkeypatch.setenv("MILLRACE_MILVUS_INDEX", "FLAT")  # said by the user: kept, however large
    chosen = ingest(source=str(sample_dir), collection=settings.collection)
    assert chosen["reconciled"] and "reindexed" not in chosen
    assert versions.active_physical(load_settings(collection=settings.collection)) == settings.collection
