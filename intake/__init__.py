"""Ingestion's front door: the S3 event relay (SNS, MinIO, EventBridge) and the S3 -> SQS consumer, which write
changes to the durable change queue and wake the collection's draining run.

May import: the core (millrace), never Prefect (it posts wake-up events to the Prefect API over HTTP), serving or
the orchestration layers."""
