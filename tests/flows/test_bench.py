import json

import pytest

from flows import cli
from millrace.benchmark import SWEEP

pytestmark = pytest.mark.integration

RECORDS = [{"_id": str(i), "title": f"Note {i}", "text": f"Pump {i} needs new seals every {i + 2} months. " * (1 + i % 4)}
           for i in range(24)]


def test_bench_ingest_smoke(tmp_path, settings, capsys):
    """`millrace bench ingest` on a tiny corpus: the plumbing only; numbers come from bench/ (BENCHMARKS.md)."""
    corpus = tmp_path / "tiny.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert cli.main(["bench", "ingest", "--corpus", str(corpus), "--limit", "20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"efficiency", "e2e_chunks_per_s", "encode_only_chunks_per_s", "chunks", "device"} <= set(r)
    assert r["documents"] == 20 and r["chunks"] >= 20 and r["device"] == "cpu"
    # Each figure is reported rounded: a tiny run's small ratio (0.0053) is off by more than 1 % from rounding alone.
    assert r["efficiency"] == pytest.approx(r["e2e_chunks_per_s"] / r["encode_only_chunks_per_s"], rel=0.03, abs=1e-4)
    assert {int(size) for size in r["batch_sweep"]} == set(SWEEP)  # JSON keys are strings
    assert r["best_batch_size"] in SWEEP and {"plan", "start_workers"} <= set(r["phase_seconds"])  # the flow's phases
