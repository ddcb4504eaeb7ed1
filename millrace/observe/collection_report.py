"""What `millrace status` reports: documents by state, every failure with its reason and retry plan, the recent
runs with their scopes, the lease holder, the last reconciliation, and the change queue: how far search lags behind
the sources, the drain's throughput, and every change set aside (dead) with why, since such a change is not
searchable until its object changes again."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from millrace.config import Settings
from millrace.documents.records import TRANSIENT_REASONS


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


def iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z") if epoch else None


def queue_section(settings: Settings, held: dict | None) -> dict[str, Any]:
    """The queue of the logical collection: changes are queued, leased and drained under the name readers use."""
    from millrace import clients

    queue = clients.change_queue(settings)
    s, t = queue.stats(settings.collection), queue.round_totals(settings.collection)
    draining = held is not None and str(held.get("source") or "").startswith("drain")
    return {"pending": s.pending, "due": s.due, "dead": s.dead, "oldest_enqueued_at": iso(s.oldest_enqueued_at),
            "oldest_pending_age_s": round(s.oldest_age_s, 3), "watermark": iso(s.watermark),
            "draining_now": draining, "draining_run": held["run_id"] if draining else None,
            "drained": {"rounds": t["rounds"], "changes": t["changes"], "seconds": round(t["seconds"], 3),
                        "changes_per_round": round(t["changes"] / t["rounds"], 1) if t["rounds"] else None,
                        "last_round_changes": t["last_changes"], "last_round_seconds": round(t["last_seconds"], 3),
                        "last_round_at": iso(t["last_finished_at"])},
            "dead_entries": [{"source": e.source, "object": e.object, "kind": e.kind, "reason": e.reason or None,
                              "detail": e.detail or None, "attempts": e.attempts, "origin": e.origin or None,
                              "enqueued_at": iso(e.enqueued_at)}
                             for e in queue.entries(settings.collection, "dead", limit=1000)]}


def status_report(settings: Settings) -> dict[str, Any]:
    from millrace import clients
    from millrace.ledger import lease
    from millrace.index import versions

    ledger = clients.ledger(settings)
    physical = versions.active_physical(settings)  # document rows and runs are kept per physical collection
    runs = ledger.recent_runs(physical, 5)
    held = lease.current(ledger, settings.collection)  # held on the name readers use
    return {"collection": settings.collection, "physical_collection": physical,
            "counts": ledger.counts(physical), "last_run": runs[0] if runs else None, "recent_runs": runs,
            "lease": held, "queue": queue_section(settings, held),
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
    lines += format_queue(report.get("queue"))
    for d in report["documents"]:
        if d["state"] in ("failed", "quarantined"):
            served = "; previous version still served" if d["serving_previous_version"] else ""
            lines.append(f"  {d['state']:<11} {d['source_uri']}  {d['reason'] or ''}: {(d['detail'] or '')[:150]}"
                         f" [retry {d['retry']}{served}]")
    return "\n".join(lines)


def format_queue(q: dict[str, Any] | None) -> list[str]:
    if not q:
        return []
    drained = q["drained"]
    state = f"draining now (run {q['draining_run']})" if q["draining_now"] else "no drain running"
    lines = [f"queue: {q['pending']} pending ({q['due']} due), {q['dead']} dead; oldest pending "
             f"{q['oldest_pending_age_s']:.0f}s; searchable through {q['watermark']}; {state}"]
    if drained["rounds"]:
        lines.append(f"drained: {drained['changes']} changes in {drained['rounds']} rounds "
                     f"({drained['changes_per_round']} per round, {drained['seconds']:.1f}s); last round "
                     f"{drained['last_round_changes']} changes in {drained['last_round_seconds']:.2f}s at "
                     f"{drained['last_round_at']}")
    for e in q["dead_entries"]:
        lines.append(f"  dead        {e['source'].rstrip('/')}/{e['object']}  {e['reason'] or ''}: "
                     f"{(e['detail'] or '')[:150]} [{e['attempts']} attempts; retried when the object changes]")
    return lines
