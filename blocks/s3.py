"""S3 source block: endpoint and credentials for any S3-compatible store."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class S3SourceBlock(Block):
    """Credentials for s3:// sources; leave the keys empty to use the standard AWS chain."""

    _block_type_name = "Millrace S3 Source"
    _block_type_slug = "millrace-s3-source"

    endpoint_url: str = Field("", description="e.g. http://minio:9000; empty = AWS")
    aws_access_key_id: str = ""
    aws_secret_access_key: SecretStr = SecretStr("")
    region_name: str = ""

    def to_settings(self) -> dict:
        return {"s3_endpoint_url": self.endpoint_url, "s3_key": self.aws_access_key_id,
                "s3_secret": self.aws_secret_access_key, "s3_region": self.region_name}

    def get_client(self):
        """An s3fs filesystem for these credentials, the process's shared one (millrace.clients)."""
        from millrace import clients
        from millrace.config import Settings

        return clients.s3_filesystem(Settings(**{k: v for k, v in self.to_settings().items() if v}))
