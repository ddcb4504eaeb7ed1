import gzip
import json

import pytest

from millrace.config import ConfigError, load_settings
from millrace.documents.extract import ExtractError
from millrace.documents.records import DocSummary
from millrace.ledger.book import Ledger
from millrace.ledger.plan import plan_run
from millrace.sources.base import open_source
from millrace.sources.jsonl import JsonlSource, record_document, record_id

pytestmark = pytest.mark.unit


def write(path, records):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


def test_records_are_documents_with_title_and_text(tmp_path):
    path = write(tmp_path / "corpus.jsonl.gz", [{"_id": "a/1", "title": "Pumps", "text": "Check the seals."},
                                                {"_id": 2, "title": "", "text": "Untitled body."}])
    src = open_source(str(path), load_settings())
    assert isinstance(src, JsonlSource)
    objs = list(src.list())
    assert [record_id(o.uri) for o in objs] == ["a/1", "2"]
    assert len({o.doc_id for o in objs}) == 2 and all(o.uri.startswith(path.as_uri() + "#") for o in objs)
    doc = record_document(objs[0], src.read(objs[0]))
    assert doc.text == "Pumps Check the seals." and doc.title == "Pumps"
    assert record_document(objs[1], src.read(objs[1])).title == "2"  # no title: the id stands in


def test_fingerprint_follows_the_record_content(tmp_path):
    path = write(tmp_path / "c.jsonl", [{"_id": "1", "text": "one"}, {"_id": "2", "text": "two"}])
    before = {o.doc_id: o.fingerprint for o in JsonlSource(path).list()}
    write(path, [{"_id": "1", "text": "one"}, {"_id": "2", "text": "two, edited"}])
    after = {o.doc_id: o.fingerprint for o in JsonlSource(path).list()}
    changed = [d for d in before if before[d] != after[d]]
    assert len(changed) == 1


def test_empty_record_fails_and_bad_lines_name_the_line(tmp_path):
    path = write(tmp_path / "c.jsonl", [{"_id": "1", "title": "", "text": "  "}])
    src = JsonlSource(path)
    obj = next(src.list())
    with pytest.raises(ExtractError) as err:
        record_document(obj, src.read(obj))
    assert err.value.reason == "empty"
    (tmp_path / "bad.jsonl").write_text('{"_id": "1", "text": "ok"}\n{"text": "no id"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        list(JsonlSource(tmp_path / "bad.jsonl").list())


def test_a_record_removed_from_the_file_is_planned_for_deletion(tmp_path):
    path = write(tmp_path / "c.jsonl", [{"_id": "1", "text": "one"}, {"_id": "2", "text": "two"}])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    objs = list(JsonlSource(path).list())
    ledger.record_batch("c", [DocSummary(doc_id=o.doc_id, source_uri=o.uri, fingerprint=o.fingerprint,
                                         content_hash="h", chunks=1) for o in objs], [], "v")
    write(path, [{"_id": "1", "text": "one"}])
    plan = plan_run(list(JsonlSource(path).list()), path.as_uri(), ledger, "c", "v")
    assert [r["doc_id"] for r in plan.gone] == [objs[1].doc_id]
    assert len(plan.skipped) == 1 and not plan.todo
