"""The real-world corpus through the real CLI: every file accounted for, phrases found, re-runs idempotent."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXCLUDES = ["*.expected.txt", "MANIFEST.tsv"]  # ground truth stays out, so a phrase can only find its file


def millrace(*args: str, env: dict) -> dict:
    cmd = [str(Path(sys.executable).parent / "millrace"), *args, "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def corpus(shared_docs, tmp_path_factory, prefect_api):
    """One CLI ingest (default LocalCluster, Milvus Lite) of the corpus, then a second one."""
    home = tmp_path_factory.mktemp("shared-home")
    env = {**os.environ, "MILLRACE_HOME": str(home), "PREFECT_API_URL": prefect_api}
    env.pop("MILLRACE_DASK_ADDRESS", None)
    excludes = [a for pattern in EXCLUDES for a in ("--exclude", pattern)]
    first = millrace("ingest", str(shared_docs), *excludes, env=env)
    second = millrace("ingest", str(shared_docs), *excludes, env=env)
    status = millrace("status", env=env)
    manifest = {row["file"]: row for row in csv.DictReader(open(shared_docs / "MANIFEST.tsv"), delimiter="\t")}
    return {"home": home, "first": first, "second": second, "status": status, "manifest": manifest,
            "files": sorted(p.name for p in shared_docs.iterdir() if p.name in manifest), "dir": shared_docs}


def test_every_file_is_indexed_or_failed_with_a_reason(corpus):
    docs = {d["source_uri"].rsplit("/", 1)[1]: d for d in corpus["status"]["documents"]}
    assert sorted(docs) == corpus["files"]
    counts = corpus["status"]["counts"]
    assert counts.get("indexed", 0) + counts.get("failed", 0) + counts.get("quarantined", 0) == len(corpus["files"])
    gates = {"missing_id", "duplicate_id", "text_length", "vector_dim", "non_finite_vector", "not_unit_norm",
             "garbled_text", "duplicate_text", "missing_metadata"}
    for name, d in docs.items():
        assert d["state"] in ("indexed", "failed", "quarantined"), name
        assert (d["state"] == "indexed") == (d["chunks"] > 0), name
        if d["state"] == "failed":
            assert d["reason"] in {"empty", "encrypted", "corrupt", "no_text", "unsupported", "timeout", "too_large"}
        if d["state"] == "quarantined":
            assert set(d["reason"].split(",")) <= gates, (name, d["reason"])
        if d["state"] != "indexed":
            assert d["detail"], name
    # Most of a real-world corpus must land: failures are the exception, each with its reason.
    assert counts["indexed"] >= 0.8 * len(corpus["files"])


def test_every_format_family_has_indexed_documents(corpus):
    docs = {d["source_uri"].rsplit("/", 1)[1]: d for d in corpus["status"]["documents"]}
    families: dict[str, list[str]] = {}
    for name in corpus["files"]:
        families.setdefault(corpus["manifest"][name]["format"], []).append(docs[name]["state"])
    assert {f for f, states in families.items() if "indexed" not in states} == set(), families


def test_known_bad_documents_fail_for_the_right_reason(corpus):
    docs = {d["source_uri"].rsplit("/", 1)[1]: d for d in corpus["status"]["documents"]}
    for name, row in corpus["manifest"].items():
        note = row["note"].lower()
        if "password" in note or "encrypted" in note and "email" not in note and "s/mime" not in note:
            assert docs[name]["reason"] == "encrypted", name
        if row["size_bytes"] == "0":
            assert docs[name]["reason"] == "empty", name


def _phrases(expected: str) -> list[str]:
    out = []
    for line in expected.splitlines():
        if line.lstrip().startswith("|"):
            continue  # Markdown table rows are cell fragments, not sentences anyone would search for
        line = re.sub(r"[#*_`>\[\]()!|]", " ", line)
        words = line.split()
        if len(words) >= 8 and sum(w.isalpha() for w in words) >= 6:
            out.append(" ".join(words[:30]))
    return out[:3]


def test_phrases_from_expected_texts_find_their_files(corpus, monkeypatch):
    from millrace.config import load_settings
    from millrace.search import Retriever

    monkeypatch.setenv("MILLRACE_HOME", str(corpus["home"]))
    retriever = Retriever(load_settings())
    docs = {d["source_uri"].rsplit("/", 1)[1]: d for d in corpus["status"]["documents"]}
    checked, missed = 0, []
    for name, row in corpus["manifest"].items():
        expected = corpus["dir"] / (row["expected_text_file"] or "-")
        if docs.get(name, {}).get("state") != "indexed" or not expected.is_file():
            continue
        phrases = _phrases(expected.read_text(errors="replace"))
        if not phrases:
            continue
        checked += 1
        found = any(any(h.source_uri.endswith("/" + name) for h in retriever.search(p, k=10)) for p in phrases)
        if not found:
            missed.append(name)
    assert checked >= 20
    assert missed == [], f"{len(missed)}/{checked} files not found by their own phrases: {missed}"


def test_second_ingest_changes_nothing(corpus):
    first, second = corpus["first"], corpus["second"]
    assert first["reconciled"] and second["reconciled"]
    assert first["seen"] == second["seen"] == len(corpus["files"])
    assert (second["processed"], second["chunks_written"]) == (0, 0)
    assert second["collection_count"] == first["collection_count"] == first["chunks_written"]
    assert set(first) >= {"seen", "indexed", "skipped", "failed", "deleted", "chunks_written", "seconds"}
