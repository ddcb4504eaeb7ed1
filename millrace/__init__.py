"""Millrace: keep a Milvus index in sync with your documents."""
