"""Where documents come from: the local folder, S3, JSONL records, the bundled samples."""
