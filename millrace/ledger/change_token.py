"""Whether the ledger's database changed since a reader last looked, for far less than a read of it costs.

The API resolves, on every request, the physical collection serving now and the index version its cache entries
carry: two ledger reads in a worker thread (1.8 ms of a request, BENCHMARKS.md "Serving"). Both change only when
something commits to the ledger. SQLite counts commits for us: `PRAGMA data_version` on a connection changes when
any other connection has committed to the file since that connection last asked, in this process or another. A
connection kept for this alone, which never writes, so sees every commit, costs ~10 µs a look and no thread hop.

Other databases (PostgreSQL) have no such counter: `token()` says None there, and readers read every time."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class LedgerWatch:
    def __init__(self, url: str):
        self._path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def token(self) -> int | None:
        """A number that differs after any commit to the ledger; None when it cannot tell (not SQLite, no file
        yet, the file busy): then the caller reads the ledger."""
        if self._path is None:
            return None
        with self._lock:
            try:
                if self._conn is None:
                    if not self._path.exists():  # nothing committed yet; mode=ro would not create it anyway
                        return None
                    # Read-only, no busy wait: a look that would wait for a writer reports "cannot tell" instead,
                    # and the caller reads the ledger in a worker thread (the event loop never blocks on a lock).
                    self._conn = sqlite3.connect(f"{self._path.as_uri()}?mode=ro", uri=True, timeout=0,
                                                 check_same_thread=False, isolation_level=None)
                return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                self.close()
                return None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
