"""Ingestion tasks; each runs on a Dask worker unless the flow calls it directly."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from millrace import pipeline
from millrace.config import ConfigError, Settings
from millrace.embed import Embedder
from millrace.records import BatchResult, SourceObject
from millrace.sources import open_source
from millrace.store import MilvusStore

IO_RETRY_DELAYS = [2, 5, 15]


def not_a_config_error(task, task_run, state) -> bool:
    """Retry I/O hiccups, not mistakes: a wrong path or setting fails the same way every time."""
    try:
        state.result()
    except ConfigError:
        return False
    except Exception:
        return True
    return True


@task(name="list-source", task_run_name="list {source}", retries=3, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=not_a_config_error, cache_policy=NO_CACHE)
def list_source(source: str, settings: Settings) -> list[SourceObject]:
    """List the documents at a folder or S3 prefix with their fingerprints."""
    return list(open_source(source, settings).list())


@task(name="embedding-dim", cache_policy=NO_CACHE)
def embedding_dim(settings: Settings) -> int:
    """Load the embedding model on a worker (once per process) and report its dimension."""
    return Embedder(settings).dim


@task(name="process-batch", task_run_name="process batch {batch_no}", cache_policy=NO_CACHE)
def process_batch(batch_no: int, objects: list[SourceObject], source: str, settings: Settings,
                  reuse: dict[str, list[float]] | None = None) -> BatchResult:
    """Extract, chunk, embed and quality-check one batch of documents."""
    return pipeline.process_batch(objects, source, settings, reuse)


@task(name="write-batch", task_run_name="write batch {batch_no}", retries=2, retry_delay_seconds=[5, 15],
      retry_condition_fn=not_a_config_error, cache_policy=NO_CACHE)
def write_batch(batch_no: int, result: BatchResult, settings: Settings,
                existing: dict[str, set[str]] | None = None) -> int:
    """Upsert a batch's chunks into Milvus and drop the chunks of their older versions."""
    return _write(result, settings, existing)


def _write(result: BatchResult, settings: Settings, existing: dict[str, set[str]] | None = None) -> int:
    if settings.milvus_is_lite and _in_dask_worker():
        raise ConfigError("Milvus Lite data can only be written by the process that opened it (the flow), not "
                          "from Dask workers; use a Milvus server (MILLRACE_MILVUS_URI) for worker-side writes")
    store = milvus_store(settings)
    return pipeline.write_chunks(store, result, existing)


_stores: dict[str, MilvusStore] = {}


def milvus_store(settings: Settings) -> MilvusStore:
    # One client per process and collection: Lite allows a single opener, servers like reused channels.
    key = f"{settings.resolved_milvus_uri}|{settings.collection}"
    if key not in _stores:
        _stores[key] = MilvusStore(settings)
    return _stores[key]


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False
