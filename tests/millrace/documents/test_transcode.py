"""Mail saved in UTF-16/32 (with or without a byte-order mark) is parsed as the MIME message it is; other files and
ordinary mail pass through untouched."""

from __future__ import annotations

import codecs

import pytest

from millrace.documents.transcode import mail_as_utf8, wide_encoding

BODY = "Grüße aus Köln: the sluice at Zürich — 東京 — was inspected on 4 May."
MAIL = ("From: Inspector <a@example.org>\r\nTo: ops@example.org\r\nSubject: =?utf-8?q?Pr=C3=BCfung?=\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{BODY}\r\n")
ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


@pytest.mark.unit
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wide_mail_becomes_the_same_message_in_utf8(encoding):
    assert mail_as_utf8(MAIL.encode(encoding)) == MAIL.encode("utf-8")


@pytest.mark.unit
@pytest.mark.parametrize("data", [
    MAIL.encode("utf-8"),  # ordinary mail
    "Just some notes, saved by Notepad.\r\nSecond line.\r\n".encode("utf-16"),  # Tika's text parser reads these
    codecs.BOM_UTF16_LE + b"\x00\x01" * 300,  # a binary file that happens to start like UTF-16
    b"%PDF-1.7\n" + bytes(600),
    b"",
])
def test_other_files_pass_untouched(data):
    assert mail_as_utf8(data) is data


@pytest.mark.unit
def test_wide_encoding_needs_a_mark_or_a_run_of_ascii():
    assert wide_encoding("From: a@b.c\r\nTo: d@e.f\r\n".encode("utf-16-be")) == ("utf-16-be", 0)
    assert wide_encoding(codecs.BOM_UTF32_LE + "x".encode("utf-32-le")) == ("utf-32-le", 4)
    assert wide_encoding("ab".encode("utf-16-le")) == ("", 0)  # too short to tell
    assert wide_encoding("Grüße Köln Zürich".encode("latin-1") * 10) == ("", 0)


@pytest.fixture(scope="module")
def extractor():
    from millrace.config import Settings
    from millrace.documents.extract import TikaJvmExtractor

    return TikaJvmExtractor(Settings())


@pytest.mark.integration
def test_the_shared_utf16_mail_is_extracted(extractor, shared_docs):
    from millrace.documents.records import SourceObject

    path = shared_docs / "unstructured__fake-email-utf-16.eml"
    data = path.read_bytes()
    doc = extractor.extract(SourceObject.make(path.as_uri(), len(data), "f"), data)
    assert doc.content_type == "message/rfc822" and doc.title == "Test Email"
    assert "Roses are red" in doc.text and "Violets are blue" in doc.text
    assert "\x00" not in doc.text


@pytest.mark.integration
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_wide_mail_with_non_ascii_text_is_extracted(extractor, encoding):
    from millrace.documents.records import SourceObject

    data = MAIL.encode(encoding)
    doc = extractor.extract(SourceObject.make(f"file:///mail/inspection-{encoding}.eml", len(data), "f"), data)
    assert doc.content_type == "message/rfc822" and doc.title == "Prüfung"
    assert BODY in doc.text
