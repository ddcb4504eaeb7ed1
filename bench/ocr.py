"""OCR quality and speed on a folder of documents (BENCHMARKS.md, "OCR"): the PDFs and images that give no text
without OCR are the scans; each is extracted again with OCR (the real path: millrace.documents.extract with MILLRACE_OCR=auto)
and compared with its expected text where the folder has one (<name>.expected.txt).

    .venv/bin/python bench/ocr.py --docs ../shared/data/docs [--languages eng] [--json out.json]

Similarity, both on casefolded text with whitespace collapsed: `chars` is difflib's ratio over characters (order
matters), `words` the share of the expected words (as a multiset) found in the OCR output."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from millrace.config import Settings
from millrace.documents.extract import ExtractError, TikaJvmExtractor
from millrace.documents.records import SourceObject

_WORD = re.compile(r"\w+")


def similarity(got: str, expected: str) -> dict[str, float]:
    a, b = " ".join(got.casefold().split()), " ".join(expected.casefold().split())
    want, have = Counter(_WORD.findall(b)), Counter(_WORD.findall(a))
    words = sum((want & have).values()) / max(1, sum(want.values()))
    return {"chars": round(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(), 3), "words": round(words, 3)}


def _extract(extractor: TikaJvmExtractor, path: Path):
    data = path.read_bytes()
    return extractor.extract(SourceObject.make(path.resolve().as_uri(), len(data), "f"), data)


def scans(docs: Path) -> list[Path]:
    """The PDFs and images of `docs` that give no text without OCR."""
    plain = TikaJvmExtractor(Settings(ocr="off", parse_timeout_s=600))
    found = []
    for path in sorted(p for p in docs.iterdir() if p.suffix.lower() in (".pdf", ".png", ".jpg", ".jpeg", ".tif",
                                                                        ".tiff")):
        try:
            _extract(plain, path)
        except ExtractError as exc:
            if exc.reason == "no_text":
                found.append(path)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=Path, default=Path("../shared/data/docs"))
    ap.add_argument("--languages", default="eng")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    extractor = TikaJvmExtractor(Settings(ocr="auto", ocr_languages=args.languages, parse_timeout_s=600,
                                          ocr_max_pages=0))
    rows, pages, seconds = [], 0, 0.0
    for path in scans(args.docs):
        t = time.perf_counter()
        doc = _extract(extractor, path)
        took = time.perf_counter() - t
        pages, seconds = pages + max(1, doc.page_count), seconds + took
        row = {"file": path.name, "pages": max(1, doc.page_count), "page_numbers": [p.number for p in doc.pages],
               "chars": len(doc.text), "seconds": round(took, 2)}
        expected = path.with_name(path.name + ".expected.txt")
        if expected.is_file():
            row["similarity"] = similarity(doc.text, expected.read_text(errors="replace"))
        rows.append(row)
        print(json.dumps(row))
    tesseract = subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    # Pages/s is of the whole extraction of the scans (render, OCR, XHTML), on a machine that may be shared.
    summary = {"documents": len(rows), "pages": pages, "seconds": round(seconds, 2),
               "pages_per_s": round(pages / seconds, 3) if seconds else 0.0,
               "machine": {"cpus": os.cpu_count(), "load_1m_after": round(os.getloadavg()[0], 2),
                           "tesseract": tesseract, "date": time.strftime("%Y-%m-%d")}}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
