import json
import math

import pytest

from millrace.config import ConfigError
from millrace.evaluate import default_collection, load_beir, score

pytestmark = pytest.mark.unit


def test_scores_come_from_the_standard_measures():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}}
    perfect = {"q1": {"d1": 1.0, "x": 0.5}, "q2": {"d2": 0.9, "d3": 0.8}}
    assert score(qrels, perfect) == {"ndcg@10": 1.0, "map@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}
    # q1's relevant document at rank 2, q2 finds nothing: DCG 1/log2(3), reciprocal rank 1/2, half the queries.
    second = {"q1": {"x": 0.9, "d1": 0.5}}
    got = score(qrels, second)
    assert got["ndcg@10"] == pytest.approx(0.5 / math.log2(3), abs=1e-4)
    assert got["mrr@10"] == pytest.approx(0.25) and got["map@10"] == pytest.approx(0.25)
    assert got["recall@100"] == pytest.approx(0.5)


def test_load_beir_reads_the_layout_and_only_judged_queries(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "t", "text": "x"}) + "\n")
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps({"_id": q, "text": f"query {q}"}) for q in "123"))
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n3\td1\t2\n")
    ds = load_beir(tmp_path, "test")
    assert ds.queries == {"1": "query 1", "3": "query 3"}
    assert ds.qrels == {"1": {"d1": 1}, "3": {"d1": 2}}
    assert ds.corpus.name == "corpus.jsonl" and default_collection("SciFact-v2") == "beir_scifact_v2"
    with pytest.raises(ConfigError, match="have: test"):
        load_beir(tmp_path, "dev")
    with pytest.raises(ConfigError, match="not a BEIR data set"):
        load_beir(tmp_path / "qrels", "test")
