"""Fuzzing the extraction wrapper through the real in-process Tika with mutated copies of the shared documents
(byte flips, truncations, splices of two documents, inserted garbage, repeated ranges): every input gives a Document
or an ExtractError with a known reason, and the process's memory stays bounded over the run.

Reproducible in CI (derandomized, ~60 s). A longer, random run:
    MILLRACE_FUZZ_EXAMPLES=2000 MILLRACE_FUZZ_SEED=$RANDOM .venv/bin/python -m pytest tests/millrace/documents/test_extract_fuzz.py
"""

from __future__ import annotations

import os

import psutil
import pytest
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from millrace.config import Settings
from millrace.documents.extract import ExtractError, TikaJvmExtractor
from millrace.documents.records import Document, SourceObject
from tests.conftest import SHARED

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MILLRACE_FUZZ_EXAMPLES", "500"))
SEED = os.environ.get("MILLRACE_FUZZ_SEED")
REASONS = {"encrypted", "corrupt", "empty", "no_text", "unsupported", "too_large", "timeout"}
HEAP = "1g"
# The JVM may grow its heap up to -Xmx during the run; past that (plus native slack) is a leak.
RSS_BOUND = (1 << 30) + (512 << 20)

# Small seeds of every format keep an example under a second; MANIFEST order keeps the run reproducible.
SEEDS = sorted(p for p in (SHARED / "docs").iterdir()
               if p.is_file() and p.name != "MANIFEST.tsv" and not p.name.endswith(".expected.txt")
               and 0 < p.stat().st_size < 200_000) if (SHARED / "docs").is_dir() else []


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    path = draw(st.sampled_from(SEEDS))
    data = bytearray(path.read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "repeat", "zero"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            for i in draw(st.lists(st.integers(0, max(0, len(data) - 1)), min_size=1, max_size=32)):
                if data:
                    data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":  # the head of this document on the tail of another: plausible headers, wrong body
            other = draw(st.sampled_from(SEEDS)).read_bytes()
            data[at:] = other[draw(st.integers(0, max(0, len(other) - 1))):]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=512))
        elif kind == "repeat":
            end = min(len(data), at + draw(st.integers(1, 4096)))
            data[at:at] = data[at:end] * draw(st.integers(2, 200))
        else:  # a zeroed range, as a torn write leaves
            end = min(len(data), at + draw(st.integers(1, 4096)))
            data[at:end] = bytes(end - at)
    return path.name, bytes(data)


@pytest.fixture(scope="module")
def extractor():
    # OCR off: a mutated PDF that loses its text layer would spend seconds in tesseract per example (the run took
    # 2-4x as long); mutated scans go through OCR in test_mutated_scans_are_ocrd_within_the_limits.
    ex = TikaJvmExtractor(Settings(tika_heap=HEAP, parse_timeout_s=30, ocr="off"))
    for path in {p.suffix: p for p in SEEDS}.values():  # warm the JVM and each format's parser: loading is not growth
        try:
            ex.extract(SourceObject.make(path.as_uri(), path.stat().st_size, "f"), path.read_bytes())
        except ExtractError:
            pass
    return ex


def test_there_are_seeds_of_many_formats():
    assert len({p.suffix for p in SEEDS}) >= 8, SEEDS


def test_mutated_documents_give_a_document_or_a_reason_in_bounded_memory(extractor):
    process = psutil.Process()
    start, seen = process.memory_info().rss, {"doc": 0}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=mutated())
    def fuzz(case):
        name, data = case
        obj = SourceObject.make(f"file:///fuzz/{name}", len(data), "f")
        try:
            doc = extractor.extract(obj, data)
        except ExtractError as exc:
            assert exc.reason in REASONS, (name, exc.reason, exc.detail)
            return
        assert isinstance(doc, Document)
        seen["doc"] += 1
        numbers = [p.number for p in doc.pages]
        assert numbers == sorted(set(numbers)) and all(p.text for p in doc.pages)
        doc.model_dump_json()  # valid text: the ledger, Dask and Milvus all serialise it
        assert process.memory_info().rss - start < RSS_BOUND

    if SEED is not None:
        fuzz = seed(int(SEED))(fuzz)
    fuzz()
    assert process.memory_info().rss - start < RSS_BOUND
    assert seen["doc"] > 0  # mutations that leave a readable document exist: the run did reach the parsers


def _scan_seed() -> bytes:
    """A two-page scanned PDF (pages are pictures of text), made here: no text layer, so every page is OCR'd."""
    import io

    from PIL import Image, ImageDraw

    pages = []
    for n in (1, 2):
        img = Image.new("L", (620, 877), 255)
        ImageDraw.Draw(img).text((40, 60), f"Inspection report page {n}: the sluice gates are sound.", fill=0)
        pages.append(img)
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:], resolution=75)
    return buf.getvalue()


@pytest.mark.skipif(not __import__("shutil").which("tesseract"), reason="tesseract-ocr is not installed (make)")
def test_mutated_scans_are_ocrd_within_the_limits():
    seed_pdf = _scan_seed()
    ocr = TikaJvmExtractor(Settings(tika_heap=HEAP, parse_timeout_s=30, ocr_max_pages=1, ocr_page_timeout_s=5))

    @settings(max_examples=12, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(flips=st.lists(st.integers(0, len(seed_pdf) - 1), min_size=1, max_size=16),
           cut=st.integers(len(seed_pdf) // 2, len(seed_pdf)))
    def fuzz(flips, cut):
        data = bytearray(seed_pdf[:cut])
        for i in flips:
            if i < len(data):
                data[i] ^= 0x55
        try:
            doc = ocr.extract(SourceObject.make("file:///fuzz/scan.pdf", len(data), "f"), bytes(data))
        except ExtractError as exc:
            assert exc.reason in REASONS, (exc.reason, exc.detail)
            return
        assert [p.number for p in doc.pages] == sorted({p.number for p in doc.pages})

    fuzz()
