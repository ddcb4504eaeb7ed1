"""Changes as they arrive: S3 event parsing, the event log, the durable change queue and its draining rounds, the
folder watcher, the SQS dead-letter queue.

May import: millrace.index, ledger, sources, documents and the bottom modules."""
