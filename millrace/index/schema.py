"""The collection's layout: its fields and their byte limits, the BM25 function over `text`, the vector index, and the
description that records which model's vectors it holds."""

from __future__ import annotations

import json

from millrace.config import Settings
from millrace.index.connect import build_params, pymilvus

OUTPUT_FIELDS = ["doc_id", "chunk_index", "text", "source_uri", "title", "page"]
SPARSE_FIELD = "sparse"  # BM25 term weights Milvus derives from `text` (a Function), for full-text and hybrid search
ANALYZER = {"type": "english"}  # standard tokenizer, lowercase, English stemming and stop words
# Byte limits of new collections; writes clip to the limits of the collection at hand (older ones: source_uri 2048).
LIMITS = {"text": 65535, "source_uri": 8192, "title": 1024}  # percent-encoded long names need the 8192


def collection_description(model: str, dim: int) -> str:
    """What a collection records about its vectors, in its description (Milvus keeps it with the schema)."""
    return json.dumps({"millrace": {"model": model, "dim": dim}}, sort_keys=True)


def collection_schema(client, settings: Settings, index_type: str, dim: int, model: str, full_text: bool):
    """The schema and index parameters of a new collection for `dim`-d vectors of `model`, with the BM25 field and
    its index when `full_text`."""
    mp = pymilvus()
    DataType = mp.DataType
    schema = mp.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                           description=collection_description(model, dim))
    schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=128)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
    schema.add_field("chunk_index", DataType.INT64)
    text_opts = {"enable_analyzer": True, "analyzer_params": ANALYZER} if full_text else {}
    schema.add_field("text", DataType.VARCHAR, max_length=LIMITS["text"], **text_opts)
    schema.add_field("source_uri", DataType.VARCHAR, max_length=LIMITS["source_uri"])
    schema.add_field("title", DataType.VARCHAR, max_length=LIMITS["title"])
    schema.add_field("page", DataType.INT64)
    schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
    schema.add_field("ingested_at", DataType.INT64)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index = client.prepare_index_params()
    index.add_index("vector", index_type=index_type, metric_type=settings.milvus_metric,
                    params=build_params(index_type, settings.milvus_nlist))
    if full_text:
        schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(mp.Function(name="text_bm25", function_type=mp.FunctionType.BM25,
                                        input_field_names=["text"], output_field_names=[SPARSE_FIELD]))
        index.add_index(SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    return schema, index
