"""Millrace's core: keep a Milvus index a provable mirror of its sources, in plain code without Prefect.

A room per concern (docs/architecture.md has the map), each importing only the rooms below it, as the import-linter
contracts in pyproject.toml say: the command line, the benchmark and the evaluation over the local platform, over
the pipeline and search, over observe, over the client factory (clients.py), over the rooms events, index, ledger,
sources and documents, over the bottom modules uris, registry, retry, quiet and config. Nothing here imports
Prefect, flows, tasks, blocks, serving or intake."""
