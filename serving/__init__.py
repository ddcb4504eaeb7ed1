"""Question answering over the index: retrieval from Milvus, generation by a vLLM server."""
