"""The folder watcher alone, on a real folder with real inotify: what a person does to files below a watched folder
becomes the right entries of the change queue (the drain does the indexing; tests/flows/test_watch.py)."""

from __future__ import annotations

import shutil
import threading
import time
import uuid

import pytest

from millrace import clients
from millrace.config import load_settings
from millrace.documents.records import DocSummary, doc_id_for
from millrace.events.folder_watch import FolderWatcher
from millrace.uris import canonical_source_uri, path_to_uri

pytestmark = pytest.mark.integration  # real inotify and the ledger's SQLite

MESSY = ["café notes.txt", "a #1 + b.md", "sub folder/deep/été +#.txt"]


@pytest.fixture()
def watched(tmp_path, monkeypatch):
    """A folder with messy names (and hidden ones), its watcher running in a thread, and the queue it feeds."""
    monkeypatch.setenv("MILLRACE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MILLRACE_DASK_ADDRESS", raising=False)
    settings = load_settings(collection=f"w_{uuid.uuid4().hex[:8]}")
    folder = tmp_path / "my docs"
    folder.mkdir()
    woken: list[int] = []
    watcher = FolderWatcher(settings, folder, on_change=woken.append, debounce_ms=100)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.5)  # the inotify watches are set up when the generator first runs
    try:
        yield settings, folder, watcher, woken
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def settle(settings, expected: dict[str, str], timeout: float = 15.0) -> dict[str, str]:
    """Wait until the queue holds exactly `expected` ({object: kind}), then empty it as a drain would."""
    queue = clients.change_queue(settings)
    deadline, seen = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        entries = queue.take(settings.collection)
        seen = {e.object: e.kind for e in entries}
        if seen == expected:
            time.sleep(0.5)  # and nothing else follows
            entries = queue.take(settings.collection)
            seen = {e.object: e.kind for e in entries}
            if seen == expected:
                assert all(e.origin == "watch" for e in entries)
                queue.done(entries)
                return seen
        time.sleep(0.1)
    raise AssertionError(f"queue holds {seen}, expected {expected}")


def test_added_edited_renamed_and_deleted_files_are_queued_by_their_decoded_names(watched):
    settings, folder, watcher, woken = watched
    (folder / "sub folder" / "deep").mkdir(parents=True)
    for name in MESSY:
        (folder / name).write_text(f"text of {name}")
    (folder / ".hidden.txt").write_text("never a document")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("nor this")
    (folder / "sub folder" / ".cache").mkdir()
    (folder / "sub folder" / ".cache" / "x.txt").write_text("nor this")
    settle(settings, {name: "created" for name in MESSY})
    assert woken and sum(woken) >= len(MESSY)
    entry = clients.change_queue(settings).entry  # the source is the folder's canonical URI, as an ingest names it
    assert watcher.source == canonical_source_uri(str(folder)) and "my%20docs" in watcher.source
    assert entry(settings.collection, watcher.source, MESSY[0]) is None  # settled

    (folder / MESSY[0]).write_text("edited")
    settle(settings, {MESSY[0]: "created"})

    (folder / MESSY[1]).rename(folder / "sub folder" / "renamed #2.md")
    settle(settings, {MESSY[1]: "removed", "sub folder/renamed #2.md": "created"})

    (folder / MESSY[0]).unlink()
    (folder / ".hidden.txt").unlink()
    settle(settings, {MESSY[0]: "removed"})


def test_a_folder_moved_away_removes_its_indexed_documents_and_one_moved_in_adds_its_files(watched, tmp_path):
    settings, folder, watcher, _ = watched
    (folder / "old reports" / "2024").mkdir(parents=True)
    names = ["old reports/q1 #1.txt", "old reports/2024/été.txt"]
    for name in names:
        (folder / name).write_text("report")
    settle(settings, {name: "created" for name in names})
    # What the ingest would have recorded for them, and one document elsewhere that must stay.
    ledger = clients.ledger(settings)
    for name in [*names, "old reports.txt"]:
        uri = path_to_uri(folder / name)
        ledger.record_indexed(settings.collection, DocSummary(doc_id=doc_id_for(uri), source_uri=uri,
                                                              fingerprint="f", content_hash="h", chunks=1), "v")

    outside = tmp_path / "elsewhere"
    shutil.move(str(folder / "old reports"), outside)  # one event: the folder, none for its files
    settle(settings, {name: "removed" for name in names})

    shutil.move(str(outside), folder / "back again")
    settle(settings, {"back again/q1 #1.txt": "created", "back again/2024/été.txt": "created"})

    shutil.rmtree(folder / "back again")
    settle(settings, {"back again/q1 #1.txt": "removed", "back again/2024/été.txt": "removed"})
