"""The API under a real uvicorn server on loopback, in this process: it shares the process's clients (a Milvus
Lite file has one opener per process), so a test can ingest beside it as `make server` does with a Milvus server."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flows.ingest import ingest
from millrace.sources.samples import write_samples
from serving.config import ServeSettings
from tests.conftest import free_port

NODE_DIR = Path(__file__).parent / "node"  # the Node scripts and their pinned `openai` npm package
RARE = "QX-48213-ZB"  # a part number: one document has it, others have near-identical ones


def write_corpus(root: Path) -> Path:
    """The demo's documents plus messy names in sub-folders, and short valve notes with part numbers, and a long log that names a rare part once."""
    write_samples(root)
    notes = root / "Wartung & Übersicht" / "valves #2"
    notes.mkdir(parents=True)
    for i, number in enumerate(["VK-11873-RA", "TM-50442-LC", "HP-77310-DW", "RB-26619-KE", "NS-93057-FJ"]):
        (notes / f"valve note {i + 1}+draft.txt").write_text(
            f"Valve maintenance note {i + 1}. Part number {number}: the replacement seal kit for the inlet valve "
            f"of unit {i + 3}.", encoding="utf-8")
    # The rare term once, in a long note about something else: a dense search for the term alone misses it.
    (notes / "spring inspection log.txt").write_text(
        "Spring inspection log. The crew walked the penstock from the intake gate to the powerhouse and found the "
        "coating intact apart from two blisters near the lower anchor block, which were ground out and recoated. "
        "The trash rack was cleared of winter debris, the gate hoist ropes were greased, and the standby diesel "
        f"ran under load for forty minutes. One spare, {RARE}, was taken from stores for the hoist brake. Vibration "
        "readings on both generator bearings stayed within the alarm limits throughout the test run.",
        encoding="utf-8")
    return root


def ingest_into(source: Path, settings) -> dict:
    """A real ingest (the Prefect flow, in this process) into the settings' Lite home and collection."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MILLRACE_HOME", str(settings.home))
        mp.setenv("MILLRACE_RETRY_DELAYS", "[0.2, 0.5]")
        mp.delenv("MILLRACE_DASK_ADDRESS", raising=False)
        return ingest(source=str(source), collection=settings.collection)


@contextmanager
def serve_app(settings: ServeSettings) -> Iterator[str]:
    """The app on a free loopback port until the block ends; yields its base URL."""
    import uvicorn

    from serving.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the serving app did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def run_node(script: str, config: dict, timeout: float = 300) -> dict:
    """Runs `node tests/serving/node/<script> '<config as JSON>'` and returns the JSON object it prints last (the
    scripts' convention, tests/serving/node/common.mjs). `make install` puts Node (Debian) and the pinned npm packages
    there (`npm ci`)."""
    import pytest

    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.fail("Node or the pinned openai npm package is missing: run `make install` (apt nodejs npm, then "
                    "`npm ci` in tests/serving/node)", pytrace=False)
    done = subprocess.run([node, str(NODE_DIR / script), json.dumps(config)], cwd=NODE_DIR, capture_output=True,
                          text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    result = json.loads(lines[-1]) if lines else {}
    assert done.returncode == 0 and "error" not in result, (done.returncode, result.get("error"), done.stderr[-3000:])
    return result
