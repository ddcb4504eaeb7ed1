"""Question answering over the index: retrieval from Milvus (millrace.search, micro-batched), generation by a vLLM
server, streamed with citations, behind an OpenAI-compatible API.

May import: the core (millrace); never Prefect (but for a Secret block of API keys, read lazily), intake or the
orchestration layers."""
