"""The `sync` flow: poll the configured sources (buckets without event notifications) and mirror each one."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import Field

from blocks import load_settings
from flows.ingest import ingest
from millrace.config import ConfigError


@flow(name="sync", flow_run_name="sync {collection}")
def sync(
    sources: list[str] | None = Field(None, description="Sources to mirror; default MILLRACE_SOURCES"),
    collection: str | None = Field(None, description="The collection (alias) to write; default from settings"),
    options: dict[str, Any] | None = Field(None, description="Setting overrides, as for the ingest flow"),
) -> list[dict[str, Any]]:
    """Mirror every configured source incrementally: changed documents are indexed, deleted ones dropped."""
    settings = load_settings(**{**(options or {}), **({"collection": collection} if collection else {})})
    todo = sources or settings.sources
    if not todo:
        raise ConfigError("nothing to sync: set MILLRACE_SOURCES (a JSON list, e.g. '[\"s3://bucket/docs\"]') on the "
                          "worker, or pass sources")
    # One child `ingest` run per source: each has its own scope, lease turn, artifacts and retry history.
    summaries = [ingest(source=s, collection=settings.collection, options=options) for s in todo]
    create_table_artifact(key="sync", description=f"sync of {len(todo)} source(s) into {settings.collection}", table=[
        {"source": s["source"], "seen": s["seen"], "indexed": s["indexed"], "unchanged": s["skipped"],
         "deleted": s["deleted"], "failed": s["failed"] + s["quarantined"], "seconds": s["seconds"]}
        for s in summaries])
    return summaries
