"""A local folder runs the way an S3 prefix does: `millrace watch DIR` and `millrace serve --watch DIR`, as a person
starts them on the embedded default (Milvus Lite, no Dask address: the one process owns the Lite file), index what
changes in the folder within seconds, and stop cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from millrace.config import load_settings
from millrace.documents.records import doc_id_for
from millrace.ledger.book import Ledger
from millrace.uris import path_to_uri
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MILLRACE = str(Path(sys.executable).parent / "millrace")
WAIT_S = 120


def env_for(tmp_path, prefect_api) -> dict[str, str]:
    return {**os.environ, "MILLRACE_HOME": str(tmp_path / "home"), "MILLRACE_DASK_ADDRESS": "",
            "PREFECT_API_URL": prefect_api, "MILLRACE_DRAIN_IDLE_S": "2", "MILLRACE_RETRY_DELAYS": "[0.2]",
            "MILLRACE_CACHE": "false"}


def until(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if found := check():
                return found
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, f"exited {proc.returncode} waiting for {what}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s:\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def test_millrace_watch_indexes_a_new_file_and_stops_on_sigterm(tmp_path, prefect_api, monkeypatch):
    docs, log = tmp_path / "my docs", tmp_path / "watch.log"
    (docs / "sub dir").mkdir(parents=True)
    (docs / "first.md").write_text("# First\n\nThe first document, there before the watch started.\n")
    env = env_for(tmp_path, prefect_api)
    proc = subprocess.Popen([MILLRACE, "watch", str(docs)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        monkeypatch.setenv("MILLRACE_HOME", env["MILLRACE_HOME"])
        ledger = Ledger(load_settings().resolved_ledger_url)  # SQLite, read beside the process that owns Milvus

        def state(path: Path) -> str | None:
            row = ledger.rows_for("millrace", [doc_id_for(path_to_uri(path))]).get(doc_id_for(path_to_uri(path)))
            return row and row["state"]

        until(lambda: "watching for changes" in log.read_text(), "first ingest", proc, log)
        assert state(docs / "first.md") == "indexed"
        added = docs / "sub dir" / "café #2 + notes.md"
        added.write_text("# Notes\n\nThe watcher saw this one arrive.\n")
        until(lambda: state(added) == "indexed", "the added file indexed", proc, log)
        (docs / "first.md").unlink()
        until(lambda: state(docs / "first.md") == "deleted", "the deleted file gone", proc, log)
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()[-4000:]
    drains = re.findall(r"^indexed (\d+) changes in \d+ rounds?$", log.read_text(), re.M)
    assert drains and sum(map(int, drains)) >= 2, log.read_text()[-4000:]  # one or two drains, as timing has it


def test_serve_watch_keeps_search_in_step_with_the_folder(tmp_path, prefect_api):
    docs, log, port = tmp_path / "my docs", tmp_path / "serve.log", free_port()
    docs.mkdir()
    (docs / "handbook.md").write_text("# Handbook\n\nNew employees get twenty days of paid leave a year.\n")
    proc = subprocess.Popen([MILLRACE, "serve", "--watch", str(docs), "--port", str(port)],
                            env=env_for(tmp_path, prefect_api), stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def top(query: str) -> dict | None:
        hits = httpx.post(f"{base}/v1/search", json={"query": query, "k": 3}, timeout=60).json().get("hits")
        return hits[0] if hits else None

    def top_is(query: str, name: str, text: str):
        hit = top(query)
        return hit if hit and hit["source_uri"].endswith(name) and text in hit["text"] else None

    try:
        until(lambda: "watching for changes" in log.read_text(), "first ingest", proc, log)
        until(lambda: top_is("paid leave", "handbook.md", "twenty days"), "the first ingest searchable", proc, log)

        bike = docs / "bicycle policy #1.md"
        bike.write_text("# Bicycle policy\n\nEvery employee may borrow a cargo bicycle on Tuesdays.\n")
        until(lambda: top_is("borrow a cargo bicycle", "bicycle%20policy%20%231.md", "Tuesdays"),
              "the added file searchable", proc, log)

        bike.write_text("# Bicycle policy\n\nEvery employee may borrow a cargo bicycle on Fridays only.\n")
        until(lambda: top_is("borrow a cargo bicycle", "bicycle%20policy%20%231.md", "Fridays"),
              "the edited text searchable", proc, log)

        bike.unlink()
        until(lambda: not any("bicycle" in h["source_uri"] for h in httpx.post(
            f"{base}/v1/search", json={"query": "borrow a cargo bicycle", "k": 5}, timeout=60).json()["hits"]),
              "the deleted file gone from search", proc, log)
    finally:
        code = stop(proc)
    # uvicorn re-raises the SIGTERM it handled once it has shut down: the status says how it ended, the log that it
    # ended cleanly, with the drain's round finished before the app let go of Milvus.
    text = log.read_text()
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in text, text[-4000:]
    assert re.search(r"millrace.watch - indexed \d+ changes in \d+ rounds?", text), text[-4000:]


def test_a_round_too_big_for_the_watch_process_runs_on_a_local_cluster(tmp_path, prefect_api, monkeypatch):
    """Past MILLRACE_INPROCESS_MAX_DOCS a round goes to a LocalCluster, whose batches carry the run's context; the
    watch's stop and wake events must not be in it (a lock cannot be pickled: such rounds used to fail the watch)."""
    docs, staging, log = tmp_path / "docs", tmp_path / "staging", tmp_path / "watch.log"
    docs.mkdir()
    staging.mkdir()
    env = {**env_for(tmp_path, prefect_api), "MILLRACE_INPROCESS_MAX_DOCS": "0", "MILLRACE_DASK_WORKERS": "1",
           "MILLRACE_DASK_THREADS": "1"}
    proc = subprocess.Popen([MILLRACE, "watch", str(docs)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        monkeypatch.setenv("MILLRACE_HOME", env["MILLRACE_HOME"])
        ledger = Ledger(load_settings().resolved_ledger_url)
        until(lambda: "watching for changes" in log.read_text(), "first ingest", proc, log)
        names = [f"report #{i} + annex.txt" for i in range(3)]
        for name in names:
            (staging / name).write_text(f"Quarterly report {name}: sluice gates inspected, silt removed.\n")
            os.rename(staging / name, docs / name)
        ids = [doc_id_for(path_to_uri(docs / n)) for n in names]

        def indexed() -> bool:
            rows = ledger.rows_for("millrace", ids)
            return len(rows) == 3 and all(r["state"] == "indexed" for r in rows.values())

        until(indexed, "the three files indexed on the LocalCluster", proc, log)
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()[-4000:]
    assert "cannot pickle" not in log.read_text()
