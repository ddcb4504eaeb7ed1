"""The vector index: the Milvus store and its connection, staged writes committed with the ledger, versioned
physical collections behind an alias, Lite's index by size and its one-opener lock.

May import: millrace.ledger, sources, documents and the bottom modules."""
