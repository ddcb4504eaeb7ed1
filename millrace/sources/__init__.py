"""Where documents come from: the local folder, S3 (any S3-compatible endpoint), JSONL records, the bundled samples.

May import: millrace.documents (the typed records, the extraction error), millrace.uris, registry, retry, config."""
