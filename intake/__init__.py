"""Ingestion's front door: the S3 event relay (SNS, MinIO, EventBridge) and the SQS consumer, which write changes to the durable queue and wake draining runs."""
