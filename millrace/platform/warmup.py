"""Load what every batch needs once per process, before the first batch: the embedding model, Tika's JVM and
parsers, the Great Expectations context and a first validation, the S3 client when S3 is configured. Used by standing Dask workers (`dask worker --preload millrace.platform.warmup`),
by a run's LocalCluster workers, and by the flow process when it processes a small change set itself.

Paid per batch, these costs dominated small runs: in one run of 7 single-document batches, GX alone took 10.9 s."""

from __future__ import annotations

import logging
import time

from millrace.config import Settings, load_settings

log = logging.getLogger("millrace")


def warm_up(settings: Settings, extractor: bool = True) -> dict[str, float]:
    """Load the model (one forward pass), the extractor (JVM and parsers, or the tika-server client; unless
    `extractor` is off, for a process that may never parse a file) and the GX suite; returns seconds per part.
    Idempotent: a second call in the process costs nothing."""
    from millrace import clients
    from millrace.documents.extract import TikaJvmExtractor, _Jvm, start_jvm_on_main_thread
    from millrace.documents.quality import _batch_definition

    took: dict[str, float] = {}
    t = time.perf_counter()
    embedder = clients.embedder(settings)
    embedder.encode(["warm-up"])
    took["model"] = time.perf_counter() - t
    if extractor:
        t = time.perf_counter()
        tika = clients.extractor(settings)
        if isinstance(tika, TikaJvmExtractor):
            start_jvm_on_main_thread(lambda: _Jvm.get_parser(tika.jar, settings.tika_heap))
        took["extractor"] = time.perf_counter() - t
    t = time.perf_counter()
    _batch_definition()
    _first_validation(settings, embedder.dim)
    took["quality"] = time.perf_counter() - t
    if settings.s3_endpoint_url or settings.s3_key:
        t = time.perf_counter()
        clients.s3_filesystem(settings).connect()  # botocore's service models, once per process
        took["s3"] = time.perf_counter() - t
    return took


def _first_validation(settings: Settings, dim: int) -> None:
    """One validation of a one-chunk batch: GX loads its expectation and metric classes on the first one (~0.6 s),
    which the first draining round on each worker paid after a quiet start."""
    from millrace.documents.quality import validate_chunks
    from millrace.documents.records import Chunk

    chunk = Chunk(chunk_id="warm-up", doc_id="warm-up", chunk_index=0, text="warm-up text", source_uri="file:///w",
                  title="w", page=1, content_hash="w", vector=[1.0] + [0.0] * (dim - 1))
    validate_chunks([chunk], dim, settings.chunk_size * 40)


def _use_worker_threads(worker, settings: Settings) -> Settings:
    """Outside a task (Client.run, a preload) get_worker() finds no worker, so the model would load on the one thread
    OMP_NUM_THREADS=1 gives Dask workers (torch), or on every core of the machine (ONNX Runtime), and keep it: the
    settings the model loads with name the worker's threads."""
    if worker is None or settings.embed_threads:
        return settings
    return settings.model_copy(update={"embed_threads": max(1, worker.state.nthreads)})


def warm_up_dim(settings: Settings, extractor: bool = True, dask_worker=None) -> int:
    """On each Dask worker (through Client.run, which passes `dask_worker`, on the worker's main thread, as the JVM
    wants): warm up with the run's settings (its model may differ from the worker's environment); the dimension.
    `extractor` off (a run of JSONL records) leaves Tika's JVM to the first file that needs it."""
    from millrace import clients
    from millrace.observe import logs, telemetry

    # Tracing first: the worker's spans must carry its own service name, set before any task span can start.
    telemetry.setup("millrace-worker", settings)
    logs.configure(settings)
    warm_up(_use_worker_threads(dask_worker, settings), extractor)
    return clients.embedder(settings).dim


def dask_setup(worker=None) -> None:
    """Dask's preload hook: warm the worker up from its MILLRACE_* environment as it starts."""
    from millrace.observe import logs, telemetry

    settings = load_settings()
    telemetry.setup("millrace-worker", settings)
    logs.configure(settings)
    took = warm_up(_use_worker_threads(worker, settings))
    log.info("worker warmed up: %s", ", ".join(f"{k} {v:.1f}s" for k, v in took.items()))
