"""A run's running totals, and the markdown of the Prefect artifacts it leaves behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from millrace.documents.records import BatchResult


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


def _cell(value: Any, width: int = 0) -> str:
    text = str(value).replace("|", "/").replace("\n", " ")
    return text if not width or len(text) <= width else text[:width - 1] + "…"


def _secs(v: float) -> str:
    return f"{v:,.2f} s" if v < 100 else f"{v:,.0f} s"


def ingest_report(s: dict[str, Any]) -> str:
    """The run's summary: narrow tables with units (they must fit the Prefect UI's artifact pane), never reprs."""
    from millrace.uris import display_name
    from millrace.observe.collection_report import describe_scope

    scope = s.get("scope") or {"source": s["source"]}
    rate = f"{s['docs_per_s']:.2f} documents/s, {s['chunks_per_s']:.1f} chunks/s"
    lines = [f"# Ingest into `{s['collection']}`", "",
             f"**Scope:** {describe_scope(scope)}. Only documents inside it can be deleted by this run.", "",
             f"**Wall time:** {_secs(s['seconds'])} ({rate}); flow process peak memory "
             f"{s.get('peak_rss_mb', 0):.0f} MB.", "",
             f"**Reconciliation:** Milvus holds {s['collection_count']:,} chunks, the ledger expects "
             f"{s['ledger_chunks']:,}: {'OK' if s['reconciled'] else 'MISMATCH'}.", "",
             "| documents | count |", "|---|---:|"]
    lines += [f"| {k} | {s[k]:,} |" for k in ("seen", "processed", "indexed", "skipped", "waiting", "failed",
                                              "quarantined", "deleted")]
    lines += ["", "| chunks | count |", "|---|---:|"]
    lines += [f"| {k.removeprefix('chunks_')} | {s[k]:,} |" for k in ("chunks_written", "chunks_embedded",
                                                                      "chunks_reused")]
    lines += ["", "| run phase (wall clock) | time |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {_secs(v)} |" for k, v in (s.get("phase_seconds") or {}).items()]
    lines += ["", "| stage (summed over workers) | time |", "|---|---:|"]
    lines += [f"| {k} | {_secs(v)} |" for k, v in s["stage_seconds"].items()]
    if s["failures"]:
        lines += ["", "## Failed and quarantined documents", "", "| document | stage | reason | retried |",
                  "|---|---|---|---|"]
        lines += [f"| {_cell(display_name(f['source_uri']), 48)} | {f['stage']} | {_cell(f['reason'], 24)} | "
                  f"{'automatically' if f.get('transient') else 'when changed'} |" for f in s["failures"][:200]]
        if len(s["failures"]) > 200:
            lines.append(f"\n…and {len(s['failures']) - 200} more: `millrace status` lists them all.")
        lines += ["", "Details: `millrace status --doc <uri>` shows a document's full reason and history."]
    return "\n".join(lines)


def quality_report(stats: RunStats, scope: str = "") -> str:
    processed = stats.indexed + stats.failed + stats.quarantined
    lines = ["# Quality gates (Great Expectations)", "", *([f"**Scope:** {scope}.", ""] if scope else []),
             f"{stats.quarantined} of {processed} processed documents quarantined.", "",
             "| expectation | column | failing batches | failing rows |", "|---|---|---:|---:|"]
    lines += [f"| {exp} | {col} | {b} | {rows} |" for (exp, col), (b, rows) in sorted(stats.quality.items())]
    return "\n".join(lines)
