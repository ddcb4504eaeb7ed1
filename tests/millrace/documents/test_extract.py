import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from millrace.config import ConfigError, Settings
from millrace.documents.extract import ExtractError, TikaJvmExtractor, find_tika_jar
from millrace.documents.records import SourceObject

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


@pytest.mark.parametrize("name", ["audit report.txt", "café notes.txt", "100% #1?.md"])
def test_odd_file_names_are_parsed_and_titled_by_their_decoded_name(extractor, tmp_path, name):
    from millrace.sources.base import LocalSource

    (tmp_path / name).write_text("Quarterly audit of the spillway gates.\n")
    source = LocalSource(tmp_path)
    [obj] = source.list()
    doc = extractor.extract(obj, source.read(obj))
    assert doc.title == name and "spillway gates" in doc.text and doc.content_type.startswith("text/")


class _Tika503(BaseHTTPRequestHandler):
    """A tika-server behind a proxy that is restarting: 503 for every request."""

    seen: list[str] = []

    def do_PUT(self):
        type(self).seen.append(self.headers.get("Content-Disposition", ""))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _server_extract(endpoint, **kw):
    from millrace.documents.tika_server import TikaServerExtractor
    from millrace.uris import path_to_uri

    settings = Settings(tika_endpoint=endpoint, retry_delays=[0.01, 0.01], **kw)
    obj = SourceObject.make(path_to_uri("/data/café notes.txt"), 5, "f")
    return TikaServerExtractor(settings).extract(obj, b"hello")


def test_an_unreachable_tika_server_fails_the_document_not_the_batch(caplog):
    import logging

    from tests.conftest import free_port

    caplog.set_level(logging.WARNING, logger="millrace")
    with pytest.raises(ExtractError) as info:
        _server_extract(f"http://127.0.0.1:{free_port()}")  # a real refused connection
    assert info.value.reason == "unreachable" and "ConnectionError" in info.value.detail
    assert sum("tika-server parse of" in r.getMessage() for r in caplog.records) == 3


def test_a_busy_tika_server_is_retried_then_unreachable():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tika503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _Tika503.seen.clear()
        with pytest.raises(ExtractError) as info:
            _server_extract(f"http://127.0.0.1:{server.server_port}")
        assert info.value.reason == "unreachable" and len(_Tika503.seen) == 3
        assert "filename*=UTF-8''caf%C3%A9%20notes.txt" in _Tika503.seen[0]
    finally:
        server.shutdown()
        server.server_close()


def test_a_tika_server_that_does_not_answer_in_time_is_a_timeout():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog) and never answers
    try:
        with pytest.raises(ExtractError) as info:
            _server_extract(f"http://127.0.0.1:{listener.getsockname()[1]}", parse_timeout_s=0.3)
        assert info.value.reason == "timeout"
    finally:
        listener.close()
