"""What `millrace status` reports: documents by state, every failure with its reason and retry plan, the recent
runs with their scopes, the lease holder, the last reconciliation."""

from __future__ import annotations

from typing import Any

from millrace.config import Settings
from millrace.records import TRANSIENT_REASONS


def document_entry(r: dict) -> dict[str, Any]:
    failed = r["state"] in ("failed", "quarantined")
    transient = failed and r["reason"] in TRANSIENT_REASONS
    return {"doc_id": r["doc_id"], "source_uri": r["source_uri"], "state": r["state"],
            "reason": r["reason"] or None, "detail": r["detail"] or None, "stage": r["stage"] or None,
            "chunks": r["chunks"],
            # A failed new version never removes the old one: say so, since search still returns it.
            "serving_previous_version": failed and r["chunks"] > 0,
            "retry": ("automatic" if transient else "when the document changes, or --retry-failed") if failed else None,
            "attempts": r["attempts"] if transient else 0,
            "next_attempt_at": r["next_attempt_at"] if transient else None}


def status_report(settings: Settings) -> dict[str, Any]:
    from millrace import clients, lease, versions

    ledger = clients.ledger(settings)
    physical = versions.active_physical(settings)  # document rows and runs are kept per physical collection
    runs = ledger.recent_runs(physical, 5)
    return {"collection": settings.collection, "physical_collection": physical,
            "counts": ledger.counts(physical), "last_run": runs[0] if runs else None, "recent_runs": runs,
            "lease": lease.current(ledger, settings.collection),  # held on the name readers use
            "documents": [document_entry(r) for r in ledger.rows(physical)]}


def describe_scope(scope: dict) -> str:
    parts = [scope.get("source", "?")]
    parts += [f"include {p}" for p in scope.get("include") or []]
    parts += [f"exclude {p}" for p in scope.get("exclude") or []]
    if scope.get("objects") is not None:
        parts.append(f"{len(scope['objects'])} named object(s)")
    return ", ".join(parts)


def format_status(report: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report["counts"].items())) or "no documents"
    physical = report.get("physical_collection")
    serving = f" (served by {physical})" if physical and physical != report["collection"] else ""
    lines = [f"collection {report['collection']}{serving}: {counts}"]
    if held := report.get("lease"):
        lines.append(f"being written now by run {held['run_id']} ({held['source']}, process {held['holder']})")
    for i, run in enumerate(report.get("recent_runs") or []):
        lines.append(f"{'last run' if i == 0 else 'earlier '}: {describe_scope(run['scope'] or {'source': run['source']})}"
                     f" — reconciliation {'OK' if run['reconciled'] else 'MISMATCH'} "
                     f"(Milvus {run['milvus_count']} chunks, ledger {run['ledger_count']})")
    for d in report["documents"]:
        if d["state"] in ("failed", "quarantined"):
            served = "; previous version still served" if d["serving_previous_version"] else ""
            lines.append(f"  {d['state']:<11} {d['source_uri']}  {d['reason'] or ''}: {(d['detail'] or '')[:150]}"
                         f" [retry {d['retry']}{served}]")
    return "\n".join(lines)
