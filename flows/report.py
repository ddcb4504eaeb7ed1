"""Markdown for the Prefect artifacts a run leaves behind."""

from __future__ import annotations

from typing import Any

from millrace.records import BatchResult


def ingest_report(s: dict[str, Any]) -> str:
    lines = [f"# Ingest of `{s['source']}` into `{s['collection']}`", "",
             "| seen | processed | indexed | skipped | failed | quarantined | deleted | chunks written | embedded | "
             "reused | seconds | docs/s | chunks/s |", "|" + "---|" * 13,
             f"| {s['seen']} | {s['processed']} | {s['indexed']} | {s['skipped']} | {s['failed']} | "
             f"{s['quarantined']} | {s['deleted']} | {s['chunks_written']} | {s['chunks_embedded']} | "
             f"{s['chunks_reused']} | {s['seconds']} | {s['docs_per_s']} | {s['chunks_per_s']} |", "",
             f"Stage seconds (summed over workers): {s['stage_seconds']}", "",
             f"Reconciliation: Milvus count(*) {s['collection_count']} vs ledger {s['ledger_chunks']} — "
             f"{'OK' if s['reconciled'] else 'MISMATCH'}", ""]
    if s["failures"]:
        lines += ["## Failed and quarantined documents", "", "| source | stage | reason | detail |", "|---|---|---|---|"]
        lines += [f"| {f['source_uri']} | {f['stage']} | {f['reason']} | {f['detail'][:120].replace('|', '/')} |"
                  for f in s["failures"]]
    return "\n".join(lines)


def quality_report(results: list[BatchResult], processed: int, quarantined: int) -> str:
    totals: dict[tuple[str, str], list[int]] = {}
    for r in results:
        for e in r.quality:
            t = totals.setdefault((e["expectation"], str(e["column"])), [0, 0])
            t[0] += 1 - int(e["success"])
            t[1] += e["failed_rows"]
    lines = ["# Quality gates (Great Expectations)", "",
             f"{quarantined} of {processed} processed documents quarantined.", "",
             "| expectation | column | failing batches | failing rows |", "|---|---|---|---|"]
    lines += [f"| {exp} | {col} | {b} | {rows} |" for (exp, col), (b, rows) in sorted(totals.items())]
    return "\n".join(lines)
