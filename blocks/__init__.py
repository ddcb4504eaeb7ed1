"""Prefect blocks, one per external system; `load_settings` (flags, env, then blocks, then defaults) is how the
Prefect side (flows, the `millrace` command) builds settings, and `apply_blocks` fills what flags and env left unset.

The core's own millrace.config.load_settings stops at flags, env and defaults: millrace/ never imports Prefect.
May import: the core (millrace) and Prefect; flows and the `millrace` command use it."""

from __future__ import annotations

import os
from typing import Any

from millrace import config
from millrace.config import Settings

from blocks.embedder import EmbedderBlock
from blocks.milvus import MilvusBlock
from blocks.s3 import S3SourceBlock
from blocks.tika import TikaBlock

ALL_BLOCKS = (MilvusBlock, EmbedderBlock, TikaBlock, S3SourceBlock)


def load_settings(**overrides: Any) -> Settings:
    """Build settings: `overrides` are flags (None or [] means unset) and win over MILLRACE_* env, which wins over the
    blocks saved under MILLRACE_BLOCKS (or the `blocks` flag), which win over defaults."""
    settings = config.load_settings(**overrides)
    name = settings.blocks or os.environ.get("MILLRACE_BLOCKS", "")
    if not name:
        return settings
    flags = {k for k, v in overrides.items() if v is not None and v != []}
    explicit = flags | {k for k in Settings.model_fields if f"MILLRACE_{k.upper()}" in os.environ}
    return apply_blocks(settings, name, explicit)


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
