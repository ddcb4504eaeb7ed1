"""The vector index: the Milvus store, its connection, the versioned physical collections behind an alias, Lite's index by size."""
