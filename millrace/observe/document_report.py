"""`millrace status --doc URI`: why a document is, or is not, searchable, in one step.

Its ledger row (state, reason, retry plan, freshness), the runs whose scope covered it, its chunks in Milvus against
the ledger's count, and, for an S3 object, the last event the relay saw for its key."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from millrace.config import Settings
from millrace.documents.records import doc_id_for
from millrace.uris import canonical_source_uri, s3_location, s3_uri


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else None


def doc_uri(name: str) -> str:
    """The canonical URI of a document named by path, file:// URI or s3:// URI (a record file's #id is kept)."""
    if name.startswith("s3://"):  # as printed by search/status (percent-encoded) or typed raw: decode, re-encode
        return s3_uri(*s3_location(name))
    base, sep, fragment = name.partition("#")
    return canonical_source_uri(base) + (sep + fragment if sep else "")


def verdict(row: dict | None, milvus_chunks: int) -> str:
    if row is None:
        return ("not in the ledger: no run has listed it. Check that a run's scope covers it (source, include/"
                "exclude patterns, hidden names and symbolic links are skipped) and run `millrace ingest`")
    state = row["state"]
    if state == "indexed":
        if milvus_chunks == row["chunks"]:
            return f"searchable: {milvus_chunks} chunks in Milvus"
        return (f"MISMATCH: the ledger expects {row['chunks']} chunks, Milvus holds {milvus_chunks}; "
                "a run's reconciliation repairs it (`millrace ingest` on its source)")
    if state == "deleted":
        return "not searchable: deleted at the source, and its chunks were removed"
    previous = f"; its previous version is still searchable ({row['chunks']} chunks)" if row["chunks"] else ""
    return f"not searchable in its current version: {state} at {row['stage']} ({row['reason']}){previous}"


def doc_report(settings: Settings, name: str, collection: str | None = None) -> dict[str, Any]:
    from millrace import clients
    from millrace.events import log as eventlog
    from millrace.index import versions
    from millrace.ledger.plan import Scope
    from millrace.observe.collection_report import document_entry

    uri = doc_uri(name)
    doc_id = doc_id_for(uri)
    physical = collection or versions.active_physical(settings)  # ledger rows are kept per physical collection
    ledger, store = clients.ledger(settings), clients.milvus_store(settings, physical)
    row = ledger.rows_for(physical, [doc_id]).get(doc_id)
    milvus_chunks = len(store.chunk_ids([doc_id]).get(doc_id, ())) if store.exists() else 0
    runs = []
    for run in ledger.recent_runs(physical, 200):
        scope = run.get("scope") or {"source": run["source"]}
        try:
            covered = Scope.model_validate(scope).contains(uri)
        except ValueError:
            covered = False
        if covered:
            runs.append({"run_id": run["run_id"], "finished_at": _when(run.get("finished_at")),
                         "state": run.get("state", "done"), "changed_it": bool(row and row["run_id"] == run["run_id"]),
                         "scope": scope})
    event = None
    if uri.startswith("s3://"):
        bucket, key = s3_location(uri)
        event = eventlog.last_event(settings, bucket, key)
    entry = document_entry(row) if row else None
    if entry and row:
        entry.update(modified_at=_when(row.get("modified_at")), indexed_at=_when(row.get("indexed_at")),
                     upload_to_searchable_s=row.get("fresh_s") or None,
                     next_attempt_at=_when(entry.get("next_attempt_at")))
    return {"uri": uri, "doc_id": doc_id, "collection": physical, "verdict": verdict(row, milvus_chunks),
            "ledger": entry, "milvus_chunks": milvus_chunks, "ledger_chunks": row["chunks"] if row else 0,
            "runs": runs, "last_s3_event": event, "checked_at": _when(time.time())}


def format_doc(report: dict[str, Any]) -> str:
    lines = [f"{report['uri']}", f"  collection {report['collection']}, doc_id {report['doc_id']}",
             f"  {report['verdict']}",
             f"  chunks: Milvus {report['milvus_chunks']}, ledger {report['ledger_chunks']}"]
    if entry := report["ledger"]:
        lines.append(f"  state {entry['state']}" + (f", {entry['stage']} {entry['reason']}: {entry['detail']}"
                                                     if entry["reason"] else ""))
        if entry["retry"]:
            lines.append(f"  retry {entry['retry']}" + (f", next attempt after {entry['next_attempt_at']}"
                                                         if entry.get("next_attempt_at") else ""))
        if entry.get("indexed_at"):
            lines.append(f"  modified {entry['modified_at']}, searchable since {entry['indexed_at']}"
                         + (f" ({entry['upload_to_searchable_s']:.1f} s after)" if entry["upload_to_searchable_s"]
                            else ""))
    if event := report["last_s3_event"]:
        lines.append(f"  last S3 event: {json.dumps(event, default=str)}")
    lines.append(f"  runs that covered it: {len(report['runs'])}")
    for run in report["runs"][:20]:
        lines.append(f"    {run['finished_at'] or 'running'}  {run['run_id']}  {run['state']}"
                     f"{'  (changed it)' if run['changed_it'] else ''}")
    return "\n".join(lines)
