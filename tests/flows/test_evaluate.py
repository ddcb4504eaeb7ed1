import csv
import gzip
import json

import pytest

from flows import cli
from flows.evaluate import EvaluationGateError, evaluate
from tests.conftest import SHARED

pytestmark = pytest.mark.integration

KEYS = {"ndcg@10", "map@10", "recall@100", "mrr@10", "queries", "mode", "split"}


@pytest.fixture(scope="module")
def scifact_subset(tmp_path_factory):
    """15 judged SciFact test queries, their relevant abstracts and 200 other abstracts, in BEIR's layout."""
    src = SHARED / "scifact"
    if not (src / "corpus.jsonl.gz").is_file():
        pytest.fail(f"SciFact not found at {src}: set MILLRACE_SHARED_DATA to the shared/data folder")
    with open(src / "qrels" / "test.tsv", newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t")][1:]
    qids = sorted({r[0] for r in rows}, key=int)[:15]
    qrels = [r for r in rows if r[0] in qids]
    relevant = {r[1] for r in qrels}
    out = tmp_path_factory.mktemp("scifact-subset")
    (out / "qrels").mkdir()
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in qrels))
    kept, others = [], 0
    with gzip.open(src / "corpus.jsonl.gz", "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["_id"] in relevant or others < 200:
                others += rec["_id"] not in relevant
                kept.append(line)
    (out / "corpus.jsonl").write_text("".join(kept))
    queries = [q for q in (src / "queries.jsonl").read_text().splitlines() if json.loads(q)["_id"] in qids]
    (out / "queries.jsonl").write_text("\n".join(queries) + "\n")
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory, dask_cluster):
    """One MILLRACE_HOME for the module: the subset is indexed with torch once, and each test reads or adds to it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MILLRACE_HOME", str(tmp_path_factory.mktemp("eval-home")))
        mp.setenv("MILLRACE_DASK_ADDRESS", dask_cluster.scheduler_address)
        mp.setenv("MILLRACE_RETRY_DELAYS", "[0.2, 0.5]")
        yield


@pytest.fixture(scope="module")
def torch_run(scifact_subset, home):
    """The subset indexed with the default (torch) encoder into its default collection, and scored."""
    return evaluate(data_dir=str(scifact_subset), options={"embed_backend": "torch"})


def test_evaluate_flow_scores_every_mode_and_gates(scifact_subset, torch_run):
    result = torch_run
    assert KEYS <= set(result) and result["queries"] == 15 and (result["mode"], result["split"]) == ("dense", "test")
    assert set(result["by_mode"]) == {"dense", "bm25", "hybrid"}
    assert result["by_mode"]["dense"] == {k: result[k] for k in ("ndcg@10", "map@10", "recall@100", "mrr@10")}
    # ~215 abstracts: the model must put the judged ones near the top, far above chance (~0.05).
    assert 0.5 < result["ndcg@10"] <= 1.0 and result["recall@100"] >= 0.9
    assert result["chunks"] > result["documents"] > 200

    with pytest.raises(EvaluationGateError, match="below the required"):
        evaluate(data_dir=str(scifact_subset), mode="hybrid", min_ndcg=1.01)


def test_cli_eval_beir_prints_one_json_object(scifact_subset, torch_run, capsys):
    rc = cli.main(["eval", "beir", str(scifact_subset), "--mode", "hybrid", "--json",
                   "--collection", torch_run["collection"]])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(out) and out["mode"] == "hybrid" and out["ndcg@10"] == out["by_mode"]["hybrid"]["ndcg@10"]
    # The CLI scores the collection the flow built, with the same vectors.
    assert out["chunks"] == torch_run["chunks"] and out["collection"] == torch_run["collection"]
    assert out["ndcg@10"] == pytest.approx(torch_run["by_mode"]["hybrid"]["ndcg@10"], abs=1e-6)


def test_eval_with_another_encoder_backend_scores_its_own_collection(scifact_subset, torch_run):
    """Each backend's vectors go to a collection of their own, and its queries are embedded by the same backend."""
    onnx_run = evaluate(data_dir=str(scifact_subset), options={"embed_backend": "onnx"})
    assert torch_run["collection"].startswith("beir_scifact_subset")
    assert onnx_run["collection"] == torch_run["collection"] + "_onnx"
    assert onnx_run["chunks"] == torch_run["chunks"]
    # The same function, exported: the same ranking to within float noise.
    assert abs(onnx_run["ndcg@10"] - torch_run["ndcg@10"]) < 0.002
