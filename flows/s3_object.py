"""The `s3-object` flow: mirror exactly the objects a batch of S3 events names (serving/relay.py emits the batch)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from blocks import load_settings
from flows.ingest import ingest, run_ingest
from millrace.sources import route_keys


def run_name() -> str:
    """`s3-object 3 keys in bucket`: what the run processes, readable in the runs list."""
    p = flow_run.parameters or {}
    n = len(set(p.get("created") or []) | set(p.get("removed") or []))
    return f"s3-object {n} key{'' if n == 1 else 's'} in {p.get('bucket', '?')}"


@flow(name="s3-object", flow_run_name=run_name)
def s3_object(
    bucket: str = Field(..., description="The bucket the events came from"),
    created: list[str] | None = Field(None, description="Keys created or overwritten (decoded)"),
    removed: list[str] | None = Field(None, description="Keys deleted (decoded)"),
    collection: str | None = Field(None, description="The collection (alias) to write; default from settings"),
    options: dict[str, Any] | None = Field(None, description="Setting overrides, as for the ingest flow"),
) -> list[dict[str, Any]]:
    """Index the created objects of an S3 event batch and delete the removed ones, nothing else."""
    log = get_run_logger()
    settings = load_settings(**{**(options or {}), **({"collection": collection} if collection else {})})
    # Created and removed alike are looked up now: whatever the order the events arrived in, the object's state at
    # the source decides (present: indexed if changed; gone: deleted).
    keys = sorted(set(created or []) | set(removed or []))
    routed = route_keys(bucket, keys, settings.sources)
    ignored = len(keys) - sum(len(v) for v in routed.values())
    if ignored:
        log.info("%d of %d keys lie outside the configured sources %s: ignored", ignored, len(keys), settings.sources)
    if len(routed) == 1:  # the usual case: one run, no child flow
        (source, rels), = routed.items()
        return [run_ingest(source, settings, objects=rels)]
    return [ingest(source=source, objects=rels, collection=settings.collection, options=options)
            for source, rels in sorted(routed.items())]
