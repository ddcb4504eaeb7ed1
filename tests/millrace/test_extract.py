import pytest

from millrace.config import ConfigError, Settings
from millrace.extract import ExtractError, TikaJvmExtractor, find_tika_jar
from millrace.records import SourceObject

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def extractor():
    return TikaJvmExtractor(Settings())


def extract(extractor, path):
    data = path.read_bytes()
    return extractor.extract(SourceObject.make(path.as_uri(), len(data), "f"), data)


def test_pdf_keeps_pages_title_and_content_type(extractor, sample_dir):
    doc = extract(extractor, sample_dir / "employee-handbook.pdf")
    assert doc.content_type == "application/pdf"
    assert doc.title == "Riverbend Hydro Employee Handbook"
    assert doc.page_count == 3 and [p.number for p in doc.pages] == [1, 2, 3]
    assert "27 days of paid annual leave" in doc.pages[1].text


@pytest.mark.parametrize("name,phrase", [
    ("turbine-runbook.docx", "bearing vibration alarm"), ("travel-policy.odt", "0.45 euro per kilometre"),
    ("controller-faq.html", "port 5020"), ("fish-pass-survey.eml", "1,284 salmon"),
    ("maintenance-meeting.rtf", "runner blades"), ("release-notes.md", "fish-pass flow"),
])
def test_each_sample_format_yields_its_text(extractor, sample_dir, name, phrase):
    assert phrase in extract(extractor, sample_dir / name).text


@pytest.mark.parametrize("name,reason", [
    ("unstructured__password.pdf", "encrypted"),
    ("pdfminer__aes-256-r6.pdf", "encrypted"),
    ("unstructured__password_protected.xlsx", "encrypted"),
    ("derived__empty.pdf", "empty"),
    ("unstructured__empty.txt", "empty"),
    ("docling__Strict.docx", "corrupt"),
    ("docling__ocr_test.pdf", "no_text"),
])
def test_bad_documents_fail_with_a_precise_reason(extractor, shared_docs, name, reason):
    with pytest.raises(ExtractError) as info:
        extract(extractor, shared_docs / name)
    assert info.value.reason == reason


def test_non_utf8_text_is_decoded(extractor, shared_docs):
    doc = extract(extractor, shared_docs / "charsetnorm__sample-russian.txt")
    assert any("\u0400" <= ch <= "\u04ff" for ch in doc.text)  # Cyrillic, not mojibake


def test_a_parse_over_the_timeout_is_abandoned_with_reason(shared_docs):
    slow = TikaJvmExtractor(Settings(parse_timeout_s=0.001))
    with pytest.raises(ExtractError) as info:
        extract(slow, shared_docs / "unstructured__failure-after-repair.pdf")
    assert info.value.reason == "timeout"


def test_missing_jar_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.prefix", str(tmp_path))
    with pytest.raises(ConfigError, match="setup-tika"):
        find_tika_jar(Settings(home=tmp_path, tika_jar=""))
