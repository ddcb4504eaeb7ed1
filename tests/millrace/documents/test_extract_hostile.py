"""Hostile documents through the real in-process Tika: zip bombs (flat, in a .docx, nested), a 10,000-page PDF,
100,000 nested elements, a 200 MB file. Each gets a Document or a per-document reason within the limits, and the
worker (this process and its JVM) goes on extracting afterwards."""

from __future__ import annotations

import io
import zipfile
import zlib

import psutil
import pytest

from millrace.config import Settings
from millrace.documents.extract import ExtractError, TikaJvmExtractor
from millrace.documents.records import SourceObject

pytestmark = pytest.mark.integration

GIB = 1 << 30


@pytest.fixture(scope="module")
def extractor():
    return TikaJvmExtractor(Settings(parse_timeout_s=90))


def extract(extractor, name: str, data: bytes):
    return extractor.extract(SourceObject.make(f"file:///hostile/{name}", len(data), "f"), data)


def reason(extractor, name: str, data: bytes) -> str:
    with pytest.raises(ExtractError) as info:
        extract(extractor, name, data)
    return info.value.reason


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


class _RepeatingDeflate:
    """A raw deflate stream in which every 1 MiB block of "A" is the same 1 KB: each block ends in a full flush,
    which resets the compressor's history, so one block's output stands for all of them. Deflating gigabytes for
    real would cost a minute of CPU per bomb."""

    piece = b"A" * (1 << 20)

    def __init__(self):
        self.real = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.block = block.compress(self.piece) + block.flush(zlib.Z_FULL_FLUSH)

    def compress(self, data: bytes) -> bytes:
        if data == self.piece:
            return self.block
        return self.real.compress(data) + self.real.flush(zlib.Z_FULL_FLUSH)

    def flush(self) -> bytes:
        return self.real.flush()


def streamed_zip(parts: list[tuple[str, bytes]], name: str, head: bytes, total: int, tail: bytes) -> bytes:
    """A zip with `parts` and one entry `name` of `total` repeated "A"s between head and tail, written in 1 MiB
    pieces (zipfile still computes the real CRC) so the expansion never sits in memory here."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for part, data in parts:
            z.writestr(part, data)
        real = zipfile._get_compressor
        zipfile._get_compressor = lambda *a, **kw: _RepeatingDeflate()
        try:
            with z.open(name, "w", force_zip64=True) as f:
                f.write(head)
                for _ in range(total // len(_RepeatingDeflate.piece)):
                    f.write(_RepeatingDeflate.piece)
                f.write(tail)
        finally:
            zipfile._get_compressor = real
    return buf.getvalue()


def docx_parts() -> list[tuple[str, bytes]]:
    types = (b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
             b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
             b'<Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" '
             b'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
    rels = (b'<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            b'officeDocument" Target="word/document.xml"/></Relationships>')
    return [("[Content_Types].xml", types), ("_rels/.rels", rels)]


def docx(document_xml: bytes) -> bytes:
    return zip_of([*docx_parts(), ("word/document.xml", document_xml)])


W = b'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'


def pdf(n_pages: int, blank: set[int]) -> bytes:
    """A valid PDF written object by object: page n says "page marker P<n>Q" unless it is in `blank` (over ten
    characters: a page with fewer is OCR'd, as Tika's AUTO strategy does, and would read its text twice)."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            f"<< /Type /Pages /Kids [{' '.join(f'{3 + 2 * i} 0 R' for i in range(n_pages))}] /Count {n_pages} >>"
            .encode()]
    font = 3 + 2 * n_pages
    for i in range(n_pages):
        text = b"" if i + 1 in blank else f"BT /F1 12 Tf 72 720 Td (page marker P{i + 1}Q) Tj ET".encode()
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
                    f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode())
        objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text))
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for k, obj in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (k, obj))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref))
    return out.getvalue()


def test_a_flat_zip_bomb_is_too_large(extractor):
    bomb = streamed_zip([], "a.txt", b"", 4 * GIB, b"")  # 4 GiB of text in ~4 MB
    with zipfile.ZipFile(io.BytesIO(bomb)) as z, z.open("a.txt") as entry:
        assert z.getinfo("a.txt").file_size == 4 * GIB and entry.read(3 << 20) == b"A" * (3 << 20)
    assert len(bomb) < 8 << 20
    assert reason(extractor, "bomb.zip", bomb) == "too_large"


def test_a_docx_whose_text_expands_past_the_heap_is_too_large(extractor):
    bomb = streamed_zip(docx_parts(), "word/document.xml", W + b"<w:p><w:r><w:t>", 2 * GIB,
                        b"</w:t></w:r></w:p></w:body></w:document>")
    rss = psutil.Process().memory_info().rss
    assert reason(extractor, "bomb.docx", bomb) == "too_large"  # POI runs out of the capped heap
    assert psutil.Process().memory_info().rss - rss < 2 * GIB  # -Xmx1g holds: the 2 GiB never lands in memory


def test_a_nested_zip_bomb_fails_the_document_only(extractor):
    level = zip_of([("leaf.txt", b"x" * (16 << 20))])
    for depth in range(4):  # 10^4 copies of 16 MiB: 160 GiB in a few kilobytes
        level = zip_of([(f"d{depth}-{i}.zip", level) for i in range(10)])
    assert len(level) < 64 << 10
    # Tika's zip-bomb check fires inside an embedded entry and the outer parse then dies on its own broken handler
    # state (a NullPointerException): the reason it can give is "corrupt", or "too_large" where it sees the bomb.
    assert reason(extractor, "nested.zip", level) in ("too_large", "corrupt")


def test_nesting_deeper_than_the_parsers_stack_is_too_large(extractor):
    deep = docx(W + b"<w:tbl><w:tr><w:tc>" * 20_000 + b"<w:p><w:r><w:t>x</w:t></w:r></w:p>"
                + b"</w:tc></w:tr></w:tbl>" * 20_000 + b"</w:body></w:document>")
    assert reason(extractor, "deep.docx", deep) == "too_large"  # a StackOverflowError in POI, not a dead worker


def test_100000_nested_html_elements_are_parsed(extractor):
    html = b"<html><body>" + b"<div><span>" * 100_000 + b"deep text" + b"</span></div>" * 100_000 + b"</body></html>"
    assert "deep text" in extract(extractor, "deep.html", html).text


def test_a_10000_page_pdf_keeps_every_page_number(extractor):
    blank = {2, 500, 9_999}
    doc = extract(extractor, "long.pdf", pdf(10_000, blank))
    assert doc.page_count == 10_000
    assert [p.number for p in doc.pages] == [n for n in range(1, 10_001) if n not in blank]
    assert all(p.text == f"page marker P{p.number}Q" for p in doc.pages)


def test_the_worker_still_extracts_after_all_of_them(extractor):
    assert extract(extractor, "after.txt", b"The spillway gates were inspected.").text.startswith("The spillway")


def test_a_200_mb_file_is_refused_before_it_is_read_and_the_batch_goes_on(tmp_path):
    from millrace.pipeline import process_batch
    from millrace.sources.base import LocalSource

    folder = tmp_path / "docs"
    folder.mkdir()
    with open(folder / "huge report.pdf", "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MB listed, nothing on disk
    (folder / "gates.txt").write_text("The spillway gates were inspected in May and found sound.")
    (folder / "bearing.md").write_text("# Bearings\n\nThe generator bearing temperatures stayed below 70 C.")
    objects = sorted(LocalSource(folder).list(), key=lambda o: o.uri)
    result = process_batch(objects, str(folder), Settings(home=tmp_path / "home"))
    [failure] = result.failures
    assert failure.source_uri.endswith("huge%20report.pdf")
    # Stage "read" with the size in the detail: refused from the listing, before any byte was read or parsed.
    assert (failure.stage, failure.reason) == ("read", "too_large") and str(200 << 20) in failure.detail
    assert sorted(d.source_uri.rsplit("/", 1)[1] for d in result.documents) == ["bearing.md", "gates.txt"]
    assert {c.doc_id for c in result.chunks} == {d.doc_id for d in result.documents}
