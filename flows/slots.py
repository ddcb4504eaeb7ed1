"""One writer per collection, visible in Prefect: a global concurrency limit named after the collection.

The ledger lease (millrace.lease) is what guarantees one writer, for every entry point, Prefect or not. The Prefect
limit sits outside it so that, under a Prefect server, a second run waits in Prefect's own concurrency view (the UI
shows who holds the slot) instead of inside a running flow, and so that the lease always knows every writer: a run
that got the slot still takes the lease."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

from millrace.config import Settings


def slot_name(collection: str) -> str:
    return f"millrace-collection-{collection}"


@dataclass
class Slot:
    waited_s: float = 0.0  # how long the run waited for another run to release the collection


@contextlib.contextmanager
def collection_slot(settings: Settings) -> Iterator[Slot]:
    """Hold the collection's Prefect concurrency slot (created with limit 1 when missing) for the block."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    name = slot_name(settings.collection)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except Exception:  # missing (ObjectNotFound); two runs racing to create it both end with one limit
            with contextlib.suppress(Exception):
                client.upsert_global_concurrency_limit_by_name(name, 1)
    # A killed run's slot is freed when its lease lapses (lease_duration), like the ledger lease's TTL.
    slot, started = Slot(), time.monotonic()
    with concurrency(name, occupy=1, timeout_seconds=settings.lease_wait_s, lease_duration=max(60.0, settings.lease_ttl_s),
                     strict=False, raise_on_lease_renewal_failure=False):
        slot.waited_s = time.monotonic() - started
        if slot.waited_s > 2.0:  # acquiring takes a few API calls; more means another run held it
            get_run_logger().warning("waited %.0f s for collection %s: another run held its concurrency slot %s",
                                     slot.waited_s, settings.collection, name)
        yield slot
