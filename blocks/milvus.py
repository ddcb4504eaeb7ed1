"""Milvus connection block: a Lite file path or a server/cluster URI with its token."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class MilvusBlock(Block):
    """Where the vector index lives: a Milvus Lite .db path, or a Milvus server/cluster URI."""

    _block_type_name = "Millrace Milvus"
    _block_type_slug = "millrace-milvus"

    uri: str = Field("", description="http://host:19530 for a server; empty for Milvus Lite under MILLRACE_HOME")
    token: SecretStr = Field(SecretStr(""), description="user:password or an API key")
    db_name: str = ""
    collection: str = ""
    index_type: str = Field("", description="HNSW, IVF_FLAT, GPU_CAGRA (GPU server only), ... empty = per backend")

    def to_settings(self) -> dict:
        return {"milvus_uri": self.uri, "milvus_token": self.token, "milvus_db": self.db_name,
                "collection": self.collection, "milvus_index": self.index_type}

    def get_client(self):
        """A connected pymilvus MilvusClient (created on call, never at import)."""
        from millrace.config import Settings
        from millrace.index.store import connect

        return connect(Settings(**{k: v for k, v in self.to_settings().items() if v}))
