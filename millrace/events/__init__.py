"""Changes as they arrive: S3 event parsing, the event log, the durable change queue and its draining, the folder watcher."""
