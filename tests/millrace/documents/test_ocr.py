"""OCR through the real in-process Tika and the real tesseract: scans of the shared corpus read close to their expected
texts on the right pages, image files are read, pictures inside documents are not, and every limit (page timeout,
page cap, languages, OCR off, no tesseract) ends in a reason that says what to do."""

from __future__ import annotations

import difflib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from millrace.config import ConfigError, Settings
from millrace.documents.extract import ExtractError, TikaJvmExtractor
from millrace.documents.records import SourceObject

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr is not installed (make)")]

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@pytest.fixture(scope="module")
def extractor():
    return TikaJvmExtractor(Settings(parse_timeout_s=300))


def extract(extractor, name: str, data: bytes):
    return extractor.extract(SourceObject.make(f"file:///ocr/{name}", len(data), "f"), data)


def page_image(lines: list[str], size=(1240, 1754), font_px=40):
    """A page (A4 at 150 dpi) with `lines` printed on it, as a scanner would give it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, font_px) if os.path.exists(FONT) else ImageFont.load_default()
    img = Image.new("L", size, 255)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((80, 120 + i * int(font_px * 1.8)), line, font=font, fill=0)
    return img


def scanned_pdf(pages, resolution=150) -> bytes:
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:], resolution=resolution)
    return buf.getvalue()


def ratio(got: str, expected: str) -> float:
    a, b = " ".join(got.casefold().split()), " ".join(expected.casefold().split())
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


# Measured here (bench/ocr.py): 1.00 and 0.97; the floors leave room for another tesseract build.
@pytest.mark.parametrize("name,pages,floor", [
    ("docling__ocr_test.pdf", [1], 0.9),
    ("textract__pdf-ocr_text.pdf", [1, 2, 3], 0.85),
])
def test_scans_of_the_shared_corpus_read_like_their_expected_text(extractor, shared_docs, name, pages, floor):
    data = (shared_docs / name).read_bytes()
    doc = extractor.extract(SourceObject.make((shared_docs / name).as_uri(), len(data), "f"), data)
    assert [p.number for p in doc.pages] == pages and doc.page_count == len(pages)
    assert ratio(doc.text, (shared_docs / f"{name}.expected.txt").read_text()) >= floor


def test_ocr_text_lands_on_its_own_page(extractor):
    from PIL import Image

    blank = Image.new("L", (1240, 1754), 255)
    data = scanned_pdf([page_image(["The spillway gates were inspected."]), blank,
                        page_image(["The turbine bearings were replaced."])])
    doc = extract(extractor, "scan.pdf", data)
    assert doc.page_count == 3 and [p.number for p in doc.pages] == [1, 3]  # the blank page has no text
    assert "spillway gates" in doc.pages[0].text and "turbine bearings" in doc.pages[1].text


def test_an_image_file_is_read_and_pictures_inside_documents_are_not(extractor):
    img = page_image(["The spillway gates were inspected."], size=(1400, 300))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert "spillway gates" in extract(extractor, "gates.png", buf.getvalue()).text
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as z:
        z.writestr("readme.txt", "A picture of the gates.")
        z.writestr("gates.png", buf.getvalue())
    assert "spillway" not in extract(extractor, "gates.zip", packed.getvalue()).text


def test_more_pages_to_ocr_than_the_cap_is_too_large():
    capped = TikaJvmExtractor(Settings(ocr_max_pages=2))
    data = scanned_pdf([page_image([f"Page {n} of the survey."]) for n in (1, 2, 3)])
    with pytest.raises(ExtractError) as info:
        extract(capped, "long-scan.pdf", data)
    assert info.value.reason == "too_large" and "MILLRACE_OCR_MAX_PAGES" in info.value.detail


def test_a_page_past_the_page_timeout_fails_the_document_with_timeout():
    # A full A4 page of small print: tesseract needs seconds of CPU for it anywhere, the limit is one.
    words = "spillway gate turbine bearing inspection sluice penstock runner blade generator".split()
    lines = [" ".join(words[(i + j) % len(words)] for j in range(14)) for i in range(60)]
    page = page_image(lines, size=(2480, 3508), font_px=30)
    slow = TikaJvmExtractor(Settings(ocr_page_timeout_s=1))
    with pytest.raises(ExtractError) as info:
        extract(slow, "dense.pdf", scanned_pdf([page, page], resolution=300))
    assert info.value.reason == "timeout" and "page 1" in info.value.detail  # stopped at the first page


def test_ocr_off_keeps_no_text_and_says_how_to_turn_it_on(shared_docs):
    off = TikaJvmExtractor(Settings(ocr="off"))
    data = (shared_docs / "docling__ocr_test.pdf").read_bytes()
    with pytest.raises(ExtractError) as info:
        extract(off, "docling__ocr_test.pdf", data)
    assert info.value.reason == "no_text" and "MILLRACE_OCR=auto" in info.value.detail


@pytest.mark.parametrize("settings,match", [
    (Settings(ocr_languages="xyz"), "tesseract-ocr-xyz"),
    (Settings(ocr_languages="eng;rm -rf"), "MILLRACE_OCR_LANGUAGES"),
    (Settings(ocr="sometimes"), "MILLRACE_OCR"),
])
def test_bad_ocr_settings_are_config_errors(shared_docs, settings, match):
    data = (shared_docs / "docling__ocr_test.pdf").read_bytes()
    with pytest.raises(ConfigError, match=match):
        extract(TikaJvmExtractor(settings), "scan.pdf", data)


_WITHOUT_TESSERACT = """
import json, sys
from pathlib import Path
from millrace.config import Settings
from millrace.documents.extract import ExtractError, TikaJvmExtractor
from millrace.documents.records import SourceObject
path = Path(sys.argv[1])
data = path.read_bytes()
try:
    TikaJvmExtractor(Settings()).extract(SourceObject.make(path.as_uri(), len(data), "f"), data)
    print(json.dumps({"reason": None}))
except ExtractError as exc:
    print(json.dumps({"reason": exc.reason, "detail": exc.detail}))
"""


def test_without_tesseract_a_scan_is_no_text_and_says_to_install_it(shared_docs, tmp_path):
    # The same PATH, minus tesseract: each folder that holds it is replaced by a copy made of links to the rest.
    folders = []
    for i, folder in enumerate(os.environ["PATH"].split(os.pathsep)):
        if folder and (Path(folder) / "tesseract").exists():
            shadow = tmp_path / f"bin{i}"
            shadow.mkdir()
            for entry in Path(folder).iterdir():
                if entry.name != "tesseract":
                    (shadow / entry.name).symlink_to(entry)
            folder = str(shadow)
        folders.append(folder)
    env = {**os.environ, "PATH": os.pathsep.join(folders)}
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TESSERACT, str(shared_docs / "docling__ocr_test.pdf")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["reason"] == "no_text" and "install tesseract-ocr" in out["detail"], out



def test_a_text_document_with_more_picture_pages_than_the_cap_keeps_its_text():
    from tests.millrace.documents.test_extract_hostile import pdf

    capped = TikaJvmExtractor(Settings(ocr_max_pages=1))
    doc = extract(capped, "report.pdf", pdf(6, blank={5, 6}))  # text on pages 1-4, pages 5-6 without any
    assert doc.page_count == 6 and [p.number for p in doc.pages] == [1, 2, 3, 4]
