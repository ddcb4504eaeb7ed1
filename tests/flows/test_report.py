"""The run's artifacts are readable in the Prefect UI: tables with units, never Python reprs, narrow enough."""

import pytest

from flows.report import RunStats, ingest_report, quality_report

pytestmark = pytest.mark.unit


def summary(failures: int) -> dict:
    return {"source": "s3://b/in%20box", "collection": "docs__v2", "seen": 1200, "processed": 12, "indexed": 10,
            "skipped": 1188, "waiting": 0, "failed": failures, "quarantined": 0, "deleted": 3, "chunks_written": 31,
            "chunks_embedded": 20, "chunks_reused": 11, "seconds": 123.456, "docs_per_s": 0.1, "chunks_per_s": 0.25,
            "stage_seconds": {"read": 0.001, "extract": 27.677, "embed": 3.2}, "collection_count": 5000,
            "ledger_chunks": 5000, "reconciled": True, "peak_rss_mb": 231.4,
            "phase_seconds": {"wait_for_slot": 0.1, "plan": 0.2, "start_workers": 9.9},
            "scope": {"source": "s3://b/in%20box", "include": ["*.pdf"], "exclude": [], "objects": ["a.pdf"]},
            "failures": [{"source_uri": f"s3://b/in%20box/report%20{i}%20" + "x" * 200 + ".pdf", "stage": "extract",
                          "reason": "encrypted", "detail": "password " * 50, "transient": False}
                         for i in range(failures)]}


@pytest.mark.parametrize("failures", [0, 3, 250])
def test_the_summary_is_tables_with_units_and_no_reprs(failures):
    text = ingest_report(summary(failures))
    assert "{'" not in text and "['" not in text and "s3://b/in%20box" in text
    assert "| extract | 27.68 s |" in text and "| start workers | 9.90 s |" in text
    assert "1 named object(s)" in text and "include *.pdf" in text
    table_rows = [line for line in text.splitlines() if line.startswith("|")]
    assert max(len(line) for line in table_rows) <= 100  # long names are clipped, details left to `status --doc`
    assert ("…and 50 more" in text) == (failures == 250)


def test_the_quality_artifact_shows_the_scope():
    stats = RunStats(indexed=3, quarantined=1, quality={("expect_column_values_to_be_between", "text_chars"): [1, 2]})
    text = quality_report(stats, "s3://b/p, 2 named object(s)")
    assert "**Scope:** s3://b/p, 2 named object(s)." in text and "1 of 4 processed documents quarantined" in text
