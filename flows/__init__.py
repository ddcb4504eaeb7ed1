"""Prefect flows (ingest, sync, drain, watch, rebuild, rollback, evaluate) and the `millrace` command.

The top layer: may import tasks, blocks, serving and the core (millrace)."""
