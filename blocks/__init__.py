"""Prefect blocks, one per external system; `apply_blocks` fills settings that flags and env left unset."""

from __future__ import annotations

from millrace.config import Settings

from blocks.embedder import EmbedderBlock
from blocks.milvus import MilvusBlock
from blocks.s3 import S3SourceBlock
from blocks.tika import TikaBlock

ALL_BLOCKS = (MilvusBlock, EmbedderBlock, TikaBlock, S3SourceBlock)


def apply_blocks(settings: Settings, name: str, explicit: set[str]) -> Settings:
    """Load every block type saved under `name`; a missing block type is simply not used."""
    values = settings.model_dump()
    for cls in ALL_BLOCKS:
        try:
            block = cls.load(name)
        except ValueError:
            continue
        for key, value in block.to_settings().items():
            if key not in explicit and value not in ("", None) and not (hasattr(value, "get_secret_value")
                                                                        and not value.get_secret_value()):
                values[key] = value
    return Settings(**values)


def register() -> None:
    """Register the block types with the Prefect API (`prefect block register -m blocks` does the same)."""
    for cls in ALL_BLOCKS:
        cls.register_type_and_schema()
