"""What the index should hold and why: the ledger (documents, runs, listings, staged rows), the collection lease,
run planning (what a run must do), and the change token the API watches.

May import: millrace.sources, documents and the bottom modules (uris, registry, retry, config)."""
