"""A run's running totals, and the markdown of the Prefect artifacts it leaves behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from millrace.records import BatchResult


@dataclass
class RunStats:
    """What the batches produced, kept as counts (never the batches themselves: memory stays flat)."""

    indexed: int = 0
    failed: int = 0
    quarantined: int = 0
    chunks_written: int = 0
    embedded: int = 0
    reused: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    quality: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (expectation, column) -> [batches, rows]

    def add(self, r: BatchResult) -> None:
        self.indexed += len(r.documents)
        self.quarantined += sum(1 for f in r.failures if f.stage == "quality")
        self.failed += sum(1 for f in r.failures if f.stage != "quality")
        self.embedded += r.embedded
        self.reused += r.reused
        self.failures += [f.model_dump() | {"transient": f.transient} for f in r.failures]
        for stage, s in r.stage_seconds.items():
            self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + s, 3)
        for e in r.quality:
            t = self.quality.setdefault((e["expectation"], str(e["column"])), [0, 0])
            t[0] += 1 - int(e["success"])
            t[1] += e["failed_rows"]

    def summary(self, source: str, collection: str, plan, seconds: float, check: dict) -> dict[str, Any]:
        return {
            "source": source, "collection": collection, "seen": plan.seen, "processed": plan.todo,
            "skipped": plan.skipped, "waiting": plan.waiting, "deleted": plan.gone, "indexed": self.indexed,
            "failed": self.failed, "quarantined": self.quarantined, "chunks_written": self.chunks_written,
            "chunks_embedded": self.embedded, "chunks_reused": self.reused, "seconds": round(seconds, 3),
            "docs_per_s": round(plan.todo / seconds, 3) if seconds else 0.0,
            "chunks_per_s": round(self.chunks_written / seconds, 3) if seconds else 0.0,
            "stage_seconds": dict(self.stage_seconds), "collection_count": check["milvus_count"],
            "ledger_chunks": check["ledger_count"], "reconciled": check["ok"], "failures": self.failures,
        }


def _cell(value: Any) -> str:
    return str(value).replace("|", "/").replace("\n", " ")


def ingest_report(s: dict[str, Any]) -> str:
    scope = s.get("scope") or {}
    filters = ", ".join([f"include `{p}`" for p in scope.get("include", [])] +
                        [f"exclude `{p}`" for p in scope.get("exclude", [])])
    named = scope.get("objects")
    lines = [f"# Ingest of `{s['source']}` into `{s['collection']}`", "",
             f"Scope: `{scope.get('source', s['source'])}`" + (f", {filters}" if filters else "") +
             (f", {len(named)} named object(s)" if named is not None else "") +
             " — only documents inside it can be deleted by this run.", "",
             "| documents | count |", "|---|---:|"]
    lines += [f"| {k} | {s[k]} |" for k in ("seen", "processed", "indexed", "skipped", "waiting", "failed",
                                            "quarantined", "deleted")]
    lines += ["", "| chunks | count |", "|---|---:|"]
    lines += [f"| {k.removeprefix('chunks_')} | {s[k]} |" for k in ("chunks_written", "chunks_embedded",
                                                                    "chunks_reused")]
    lines += ["", f"Wall time {s['seconds']:.1f} s ({s['docs_per_s']:.2f} documents/s, {s['chunks_per_s']:.1f} "
                  f"chunks/s); flow process peak memory {s.get('peak_rss_mb', 0):.0f} MB.", "",
              "| stage (summed over workers) | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in s["stage_seconds"].items()]
    lines += ["", f"Reconciliation: Milvus count(*) {s['collection_count']} vs ledger {s['ledger_chunks']} — "
                  f"{'OK' if s['reconciled'] else 'MISMATCH'}", ""]
    if s["failures"]:
        lines += ["## Failed and quarantined documents", "", "| source | stage | reason | retried | detail |",
                  "|---|---|---|---|---|"]
        lines += [f"| {_cell(f['source_uri'])} | {f['stage']} | {f['reason']} | "
                  f"{'automatically' if f.get('transient') else 'when changed'} | {_cell(f['detail'][:120])} |"
                  for f in s["failures"]]
    return "\n".join(lines)


def quality_report(stats: RunStats) -> str:
    processed = stats.indexed + stats.failed + stats.quarantined
    lines = ["# Quality gates (Great Expectations)", "",
             f"{stats.quarantined} of {processed} processed documents quarantined.", "",
             "| expectation | column | failing batches | failing rows |", "|---|---|---:|---:|"]
    lines += [f"| {exp} | {col} | {b} | {rows} |" for (exp, col), (b, rows) in sorted(stats.quality.items())]
    return "\n".join(lines)
