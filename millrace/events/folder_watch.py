"""A watched local folder feeds the change queue as S3 events do: every file added, edited, deleted or renamed below
it becomes a queued change (millrace.events.queue), and the collection's draining run indexes it.

The watcher names what changed and nothing more: the drain looks every object up on disk when it processes it, so a
burst of events for one file, or a kind that is stale by then, cannot make it wrong. It applies the folder's own
rules (millrace.sources.base.LocalSource): hidden files and folders, and files outside the include/exclude globs, are not
documents. inotify reports a folder moved out of the tree (or away in one step) as that folder alone, and one moved
in without any event for its files; so a folder that goes takes every document the ledger holds under it, and a
folder that arrives brings every file it holds."""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import watchfiles
from sqlalchemy import select

from millrace.config import Settings
from millrace.documents.records import DocState, doc_id_for
from millrace.events.queue import Change, shared_queue
from millrace.index import versions
from millrace.ledger.book import documents, shared_ledger
from millrace.sources.base import LocalSource
from millrace.uris import canonical_source_uri, path_to_uri, relative_name, wanted

log = logging.getLogger("millrace")


class FolderWatcher:
    """Queue the changes below `folder` for `settings.collection`; `on_change(n)` hears of every batch queued."""

    def __init__(self, settings: Settings, folder: str | os.PathLike, on_change: Callable[[int], None] | None = None,
                 debounce_ms: int = 200):
        self.settings, self.on_change, self.debounce_ms = settings, on_change, debounce_ms
        self.root = Path(folder).expanduser().resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a folder: {folder}")
        self.source = canonical_source_uri(str(self.root))
        self.queue = shared_queue(settings)

    def run(self, stop: threading.Event) -> None:
        """Watch until `stop` is set (within a `step`, 50 ms)."""
        # No watch_filter: watchfiles' default drops names (`notes~`, `*.pyc`) that the folder's ingest indexes.
        for batch in watchfiles.watch(self.root, stop_event=stop, debounce=self.debounce_ms, step=50,
                                      recursive=True, watch_filter=None, raise_interrupt=False,
                                      ignore_permission_denied=True):
            try:
                self.handle(batch)
            except Exception:  # one bad batch (a ledger hiccup) must not end the watch; the next ingest catches it
                log.exception("could not queue %d changes below %s", len(batch), self.root)

    def handle(self, batch: Iterable[tuple[watchfiles.Change, str]]) -> int:
        """Queue one batch of watchfiles events (one transaction); returns how many changes were queued."""
        changes = self.changes(batch)
        if not changes:
            return 0
        self.queue.put(changes)
        if self.on_change is not None:
            self.on_change(len(changes))
        return len(changes)

    def changes(self, batch: Iterable[tuple[watchfiles.Change, str]]) -> list[Change]:
        now = datetime.now(timezone.utc)
        kinds: dict[str, str] = {}
        gone: list[str] = []
        for event, raw in batch:
            rel = self._relative(raw)
            if rel is None:
                continue
            path = self.root / rel
            if path.is_dir():
                if event == watchfiles.Change.added:  # moved in: its files came without events of their own
                    for obj in LocalSource(path).list():
                        inner = relative_name(self.source, obj.uri)
                        if inner is not None and self._wanted(inner):
                            kinds[inner] = "created"
                continue
            # By what is on disk now: an editor's save (delete + add) or a file added then removed in one batch.
            exists = path.is_file() or path.is_symlink()
            if not exists and event == watchfiles.Change.deleted:
                gone.append(rel)
            if self._wanted(rel):
                kinds[rel] = "created" if exists else "removed"
        folders, inside = self._under_gone_folders(gone)
        # A folder deleted with its files (rm -r) is known by them, whether or not the ledger had them.
        parents = {rel.rsplit("/", i)[0] for rel in gone for i in range(1, rel.count("/") + 1)}
        folders |= parents.intersection(gone)
        for rel in folders:
            kinds.pop(rel, None)  # a folder is not an object of the source; what it held is
        for rel in inside:
            kinds.setdefault(rel, "removed")
        return [Change(collection=self.settings.collection, source=self.source, object=rel, kind=kind,
                       event_time=now, origin="watch") for rel, kind in sorted(kinds.items())]

    def _relative(self, raw: str) -> str | None:
        """The decoded '/'-separated path below the folder, or None for the folder itself, a hidden name or a path
        outside it."""
        try:
            parts = Path(raw).relative_to(self.root).parts
        except ValueError:
            return None
        if not parts or any(p.startswith(".") for p in parts):
            return None
        return "/".join(parts)

    def _wanted(self, rel: str) -> bool:
        return wanted(rel, self.settings.include, self.settings.exclude)

    def _under_gone_folders(self, gone: list[str]) -> tuple[set[str], set[str]]:
        """Of deleted paths that were not documents: those the ledger holds documents below (folders), and those
        documents."""
        if not gone:
            return set(), set()
        ledger, physical = shared_ledger(self.settings), versions.active_physical(self.settings)
        named = {doc_id_for(path_to_uri(self.root / rel)): rel for rel in gone}
        documents_gone = ledger.rows_for(physical, named)
        folders, inside = set(), set()
        with ledger.engine.connect() as conn:
            for doc_id, rel in named.items():
                if doc_id in documents_gone:
                    continue
                q = select(documents.c.source_uri).where(
                    documents.c.collection == physical, documents.c.state != DocState.deleted.value,
                    documents.c.source_uri.startswith(path_to_uri(self.root / rel) + "/", autoescape=True))
                for uri in conn.execute(q).scalars():
                    if (obj := relative_name(self.source, uri)) is not None:
                        folders.add(rel)
                        inside.add(obj)
        return folders, inside
