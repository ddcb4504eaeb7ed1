"""`make server`'s local platform: its processes, services and health probes, per-worker warm-up (the Dask
preload), the Milvus standalone server.

May import: everything in the core but the command line; nothing in the core imports it."""
