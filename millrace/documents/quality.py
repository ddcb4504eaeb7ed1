"""Data-quality gates with Great Expectations (GX Core 1.x): rows that fail quarantine their documents."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from millrace.documents.records import BatchResult, Chunk, Failure

SUITE_PATH = Path(__file__).with_name("expectations") / "chunks.json"
_lock = threading.RLock()
_gx: dict = {}


class QualityGateError(RuntimeError):
    """Too many documents failed the quality gates: the run stops before it touches the index."""


@dataclass
class GateReport:
    """Per expectation: how many rows failed it; per document: why it was quarantined."""

    expectations: list[dict] = field(default_factory=list)
    quarantined: dict[str, list[str]] = field(default_factory=dict)


def _garbled_ratio(text: str) -> float:
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch == "\ufffd" or (not ch.isprintable() and not ch.isspace()))  # U+FFFD: lost chars
    return bad / len(text)


PHASES = ("text", "vector")


def _vector_columns(vector) -> tuple[int, bool, float | None]:
    import numpy as np

    if vector is None:
        return 0, False, None
    vec = np.asarray(vector, dtype=np.float64)
    finite = bool(vec.size) and bool(np.isfinite(vec).all())
    return int(vec.size), finite, float(np.sqrt(np.dot(vec, vec))) if finite else None


def chunk_frame(chunks: list[Chunk], with_vectors: bool = True):
    """One row per chunk with the derived columns the suite checks (the vector columns only after embedding)."""
    import pandas as pd

    # Text gates are per document: one odd chunk (a lone symbol, a table of glyphs) must not sink 76 pages.
    per_doc = Counter(c.doc_id for c in chunks)
    seen: set[tuple[str, str]] = set()
    dups: Counter = Counter()
    chars: Counter = Counter()
    garbled: Counter = Counter()
    for c in chunks:
        key = (c.doc_id, c.text)
        dups[c.doc_id] += key in seen
        seen.add(key)
        chars[c.doc_id] += len(c.text)
        garbled[c.doc_id] += _garbled_ratio(c.text) * len(c.text)
    rows = []
    for i, c in enumerate(chunks):
        row = {"row": i, "chunk_id": c.chunk_id, "doc_id": c.doc_id, "source_uri": c.source_uri,
               "text_chars": len(c.text.strip()), "doc_garbled_ratio": garbled[c.doc_id] / max(chars[c.doc_id], 1),
               "doc_duplicate_ratio": dups[c.doc_id] / per_doc[c.doc_id]}
        if with_vectors:
            row["vector_dim"], row["vector_finite"], row["vector_norm"] = _vector_columns(c.vector)
        rows.append(row)
    return pd.DataFrame(rows)


def _batch_definition():
    with _lock:
        if "bd" not in _gx:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            # That module pins its logger at INFO, so every worker printed "Created temporary directory ... for
            # ephemeral docs site" into the user's ingest output; its warnings still show.
            logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            asset = context.data_sources.add_pandas("millrace").add_dataframe_asset("chunks")
            _gx["bd"] = asset.add_batch_definition_whole_dataframe("batch")
            _gx["suite"] = json.loads(SUITE_PATH.read_text())
        return _gx["bd"], _gx["suite"]


def validate_chunks(chunks: list[Chunk], dim: int, max_chars: int, phase: str | None = None) -> GateReport:
    """Run the repository's suite (or one phase of it) over a batch of chunks; map failing rows to documents."""
    from great_expectations.core.expectation_suite import ExpectationSuite

    report = GateReport()
    if not chunks:
        return report
    if phase is not None and phase not in PHASES:
        raise ValueError(f"unknown quality phase {phase!r}: use one of {PHASES}")
    bd, suite_json = _batch_definition()
    expectations = [e for e in suite_json["expectations"] if phase is None or e["meta"].get("phase") == phase]
    df = chunk_frame(chunks, with_vectors=phase != "text")
    suite = ExpectationSuite(name=f"{suite_json['name']}_{phase or 'all'}", expectations=expectations)
    # One validation at a time per process: GX parses $PARAMETER values with a shared pyparsing grammar that is
    # not thread-safe (two task threads at once fail with "push_first() missing ... 'toks'").
    params = {"dim": dim, "max_chars": max_chars}
    with _lock:
        batch = bd.get_batch(batch_parameters={"dataframe": df})
        # Pass or fail first (about half the cost of COMPLETE's row lists, which a clean batch does not need);
        # the failing rows are asked for only when something failed, which is rare.
        result = batch.validate(suite, expectation_parameters=params, result_format={"result_format": "BOOLEAN_ONLY"})
        if not result.success:
            result = batch.validate(suite, expectation_parameters=params, result_format={
                "result_format": "COMPLETE", "unexpected_index_column_names": ["row"]})
    for r in result.results:
        reason = r.expectation_config.meta["reason"]
        failed_rows = [item["row"] for item in (r.result.get("unexpected_index_list") or [])]
        report.expectations.append({"expectation": r.expectation_config.type,
                                    "column": r.expectation_config.kwargs.get("column"),
                                    "reason": reason, "success": bool(r.success), "failed_rows": len(failed_rows)})
        for row in failed_rows:
            reasons = report.quarantined.setdefault(df.at[row, "doc_id"] or chunks[row].doc_id, [])
            if reason not in reasons:
                reasons.append(reason)
    return report


def apply_gate(result: BatchResult, dim: int, max_chars: int, phase: str | None = None) -> GateReport:
    """Move the documents with failing rows from the batch's output to its quarantined failures."""
    report = validate_chunks(result.chunks, dim, max_chars, phase)
    if not report.quarantined:
        return report
    bad = report.quarantined
    for doc in [d for d in result.documents if d.doc_id in bad]:
        result.failures.append(Failure(doc_id=doc.doc_id, source_uri=doc.source_uri, fingerprint=doc.fingerprint,
                                       stage="quality", reason=",".join(sorted(bad[doc.doc_id])),
                                       detail="failed expectations: " + ", ".join(sorted(bad[doc.doc_id]))))
    result.documents = [d for d in result.documents if d.doc_id not in bad]
    result.chunks = [c for c in result.chunks if c.doc_id not in bad]
    return report
