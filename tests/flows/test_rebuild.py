"""Zero-downtime rebuilds: the alias swaps under a loop of searches that never fails nor comes back empty; rollback
returns; an evaluation gate below the bar leaves the old collection serving."""

import gzip
import json
import threading
import time

import pytest

from flows.cli import main
from flows.evaluate import EvaluationGateError
from flows.ingest import ingest
from flows.rebuild import rebuild, rollback
from millrace import clients
from millrace.config import ConfigError, load_settings
from millrace.index import versions
from millrace.search import Retriever
from tests.conftest import SHARED

pytestmark = pytest.mark.integration

QUERIES = ["How many days of paid leave do new employees get?", "Which port does the turbine controller listen on?",
           "mileage per kilometre", "turbine controller reset button"]


class SearchLoop(threading.Thread):
    """Searches until stopped, recording what each search returned (or raised) and which collection served it."""

    def __init__(self, search):
        super().__init__(daemon=True)
        self.search, self.stop, self.results = search, threading.Event(), []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                hits = self.search(QUERIES[i % len(QUERIES)])
                self.results.append(("empty", None) if not hits else ("ok", hits[0].collection))
            except Exception as exc:  # counted, never allowed
                self.results.append(("failed", f"{type(exc).__name__}: {exc}"))
            i += 1
            time.sleep(0.02)

    def outcomes(self, kind: str) -> list:
        return [r for r in list(self.results) if r[0] == kind]


@pytest.mark.slow
def test_a_rebuild_swaps_the_alias_under_searches_that_never_fail_and_rollback_returns(
        milvus_server, sample_dir, settings, monkeypatch):
    monkeypatch.setenv("MILLRACE_MILVUS_URI", milvus_server)
    settings = load_settings(collection=settings.collection)
    logical, v1, v2 = settings.collection, f"{settings.collection}__v1", f"{settings.collection}__v2"
    first = ingest(source=str(sample_dir), collection=logical)
    alias = clients.milvus_store(settings)  # the logical name: any Milvus client reading it follows the alias
    assert first["collection"] == v1 and alias.describe_alias(logical) == v1 and first["reconciled"]
    v1_chunks = clients.milvus_store(settings, v1).count()

    retriever = Retriever(settings)
    ours = SearchLoop(lambda q: retriever.search(q, k=3))  # resolves the alias, searches the physical one
    # Milvus' own alias resolution (#25662, #43853): searches by the logical name straight through pymilvus
    raw = SearchLoop(lambda q: alias.search(retriever.embedder.encode([q])[0], 3, mode="dense"))
    for loop in (ours, raw):
        loop.start()
    try:
        result = rebuild(collection=logical, chunk_size=48, chunk_overlap=8)
        swapped = len(ours.results)
        time.sleep(2)  # searches after the swap
    finally:
        for loop in (ours, raw):
            loop.stop.set()
            loop.join(30)

    assert (result["old"], result["new"], result["swapped"]) == (v1, v2, True) and result["reconciliation"]["ok"]
    assert alias.describe_alias(logical) == v2 and versions.active_physical(settings) == v2
    assert {v.physical: v.state for v in versions.registry(settings)} == {v1: "previous", v2: "active"}
    v2_chunks = clients.milvus_store(settings, v2).count()
    assert v2_chunks > v1_chunks  # the new chunking, in the new collection only
    assert clients.milvus_store(settings, v1).count() == v1_chunks
    for loop in (ours, raw):
        assert loop.outcomes("failed") == [] and loop.outcomes("empty") == [], loop.results[-5:]
    served = [c for _, c in ours.results]
    assert len(served) >= 50 and swapped >= 25 and set(served) == {v1, v2}
    assert served == sorted(served, key=lambda c: c == v2)  # one atomic moment: never v1 again after v2

    # An ordinary run after the swap writes the active collection, with the chunking pinned for it.
    (sample_dir / "release-notes.md").write_text("# Release notes\n\nThe dashboard now speaks Welsh.\n")
    after = ingest(source=str(sample_dir), collection=logical)
    assert after["collection"] == v2 and after["processed"] == 1 and after["reconciled"]
    assert clients.milvus_store(settings, v1).count() == v1_chunks

    back = rollback(collection=logical)
    assert (back["from"], back["to"]) == (v2, v1) and alias.describe_alias(logical) == v1
    assert {h.collection for h in Retriever(settings).search(QUERIES[0], k=3)} == {v1}


@pytest.mark.slow
def test_a_collection_from_before_versions_cannot_be_swapped_on_a_server_and_says_why(milvus_server, settings,
                                                                                      monkeypatch):
    monkeypatch.setenv("MILLRACE_MILVUS_URI", milvus_server)
    settings = load_settings(collection=settings.collection)
    clients.milvus_store(settings).ensure_collection(384)  # a physical collection under the logical name itself
    assert versions.active_physical(settings) == settings.collection
    with pytest.raises(ConfigError, match=r"predates versioned collections.*--collection \S+_2"):
        versions.check_swappable(settings)


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    """4 judged SciFact test queries, their relevant abstracts and 16 others, in BEIR's layout."""
    src = SHARED / "scifact"
    if not (src / "corpus.jsonl.gz").is_file():
        pytest.fail(f"SciFact not found at {src}: set MILLRACE_SHARED_DATA to the shared/data folder")
    rows = [line.split("\t") for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    qids = sorted({r[0] for r in rows}, key=int)[:4]
    qrels = [r for r in rows if r[0] in qids]
    relevant, kept, others = {r[1] for r in qrels}, [], 0
    with gzip.open(src / "corpus.jsonl.gz", "rt") as fh:
        for line in fh:
            if json.loads(line)["_id"] in relevant or others < 16:
                others += json.loads(line)["_id"] not in relevant
                kept.append(line)
    out = tmp_path_factory.mktemp("scifact-gate")
    (out / "qrels").mkdir()
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in qrels))
    (out / "corpus.jsonl").write_text("".join(kept))
    (out / "queries.jsonl").write_text("".join(q + "\n" for q in (src / "queries.jsonl").read_text().splitlines()
                                               if json.loads(q)["_id"] in qids))
    return out


def test_the_gate_refuses_a_swap_below_the_bar_and_the_cli_rebuilds_and_rolls_back(eval_set, sample_dir, settings,
                                                                                    capsys):
    logical = settings.collection  # Milvus Lite: the first collection keeps the name; the ledger resolves it
    ingest(source=str(eval_set / "corpus.jsonl"), collection=logical)
    with pytest.raises(ConfigError, match="evaluation corpus .* is not among the rebuild's sources"):
        rebuild(collection=logical, sources=[str(sample_dir)], eval_data_dir=str(eval_set))

    with pytest.raises(EvaluationGateError, match=r"scores nDCG@10 [01]\.\d+ .*below the required 1\.01: not swapped"):
        rebuild(collection=logical, eval_data_dir=str(eval_set), min_ndcg=1.01, chunk_size=64)
    assert versions.active_physical(settings) == logical
    assert {v.physical: v.state for v in versions.registry(settings)} == {logical: "active", f"{logical}__v1": "failed"}
    assert {h.collection for h in Retriever(settings).search("vitamin D deficiency", k=5)} == {logical}

    assert main(["rebuild", "--collection", logical, "--eval", str(eval_set), "--min-ndcg", "0.3", "--json"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (built["old"], built["new"], built["swapped"]) == (logical, f"{logical}__v2", True)
    assert built["gate"]["ndcg@10"] >= 0.3 and built["reconciliation"]["ok"] and built["missing_documents"] == []
    assert versions.active_physical(settings) == f"{logical}__v2"
    assert main(["search", "vitamin D deficiency", "--collection", logical]) == 0
    assert f"from {logical}__v2)" in capsys.readouterr().out
    assert main(["rollback", "--collection", logical]) == 0
    assert f"now served by {logical} (was {logical}__v2" in capsys.readouterr().out
    assert versions.active_physical(settings) == logical
