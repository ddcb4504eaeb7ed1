"""`make server`'s local platform: its processes, services, health probes, worker warm-up, the Milvus standalone server."""
