import gzip
import json

import pytest

from millrace import cli
from millrace.benchmark import SWEEP, corpus_source, take

pytestmark = pytest.mark.integration

RECORDS = [{"_id": str(i), "title": f"Note {i}", "text": f"Pump {i} needs new seals every {i + 2} months. " * (1 + i % 4)}
           for i in range(24)]


def test_take_copies_the_first_documents_of_records_or_folders(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    with gzip.open(beir / "corpus.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in RECORDS)
    assert corpus_source(beir) == beir / "corpus.jsonl.gz"
    part = take(beir, 5, tmp_path)
    assert [json.loads(line)["_id"] for line in part.read_text().splitlines()] == ["0", "1", "2", "3", "4"]
    docs = tmp_path / "docs"
    for name in ["b.txt", "a.txt", "sub/c.txt", ".hidden"]:
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(name)
    out = tmp_path / "out"
    out.mkdir()
    copied = take(docs, 2, out)
    assert sorted(p.name for p in copied.rglob("*") if p.is_file()) == ["a.txt", "b.txt"]
    assert take(docs, None, out) == docs


def test_bench_ingest_smoke(tmp_path, settings, capsys):
    """`millrace bench ingest` on a tiny corpus: the plumbing only; numbers come from bench/ (BENCHMARKS.md)."""
    corpus = tmp_path / "tiny.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert cli.main(["bench", "ingest", "--corpus", str(corpus), "--limit", "20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"efficiency", "e2e_chunks_per_s", "encode_only_chunks_per_s", "chunks", "device"} <= set(r)
    assert r["documents"] == 20 and r["chunks"] >= 20 and r["device"] == "cpu"
    assert r["efficiency"] == pytest.approx(r["e2e_chunks_per_s"] / r["encode_only_chunks_per_s"], rel=0.01)
    assert {int(size) for size in r["batch_sweep"]} == set(SWEEP)  # JSON keys are strings
    assert r["best_batch_size"] in SWEEP and {"start_workers", "process", "write"} <= set(r["phase_seconds"])
