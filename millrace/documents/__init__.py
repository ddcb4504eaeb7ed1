"""One document's way to vectors: extraction (Tika in this process or a tika-server), XHTML pages, OCR limits,
chunking, embedding and its encoder backends, the Great Expectations gates, and the typed records between them.

May import: millrace.uris, registry, retry, config only; every other room uses this one."""
