"""Try-out tools for a laptop, not part of the product: `make llm` (devllm.py) serves a tiny random-weight model with
the real vLLM (CPU build), so answers can be tried out, and tested, without a GPU or a download."""
