"""One document's way to vectors: extraction (Tika), XHTML pages, chunking, embedding, quality gates, and the typed records between them."""
