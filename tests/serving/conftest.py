"""The serving tests' read-only index, ingested once per session (the vLLM and Redis servers are in
tests/dev/servers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def index(tmp_path_factory, prefect_api):
    """One ingested Milvus Lite index for the serving tests that only read: the demo documents plus valve notes and
    an inspection log in messy sub-folders (tests.serving.harness.write_corpus). Yields (ServeSettings, corpus)."""
    import uuid

    from serving.config import ServeSettings
    from tests.serving.harness import ingest_into, write_corpus

    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "docs")
    settings = ServeSettings(home=tmp_path_factory.mktemp("serving-home"), collection=f"s_{uuid.uuid4().hex[:8]}",
                             retry_delays=[0.2, 0.5])
    summary = ingest_into(corpus, settings)
    assert summary["indexed"] == 13, summary
    return settings, corpus
