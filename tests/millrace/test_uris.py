"""Canonical object URIs: S3 keys of any spelling round-trip, event keys decode, names and relative paths read as a
person would write them, include/exclude globs match decoded paths (local names round-trip in sources/test_base.py,
through a folder listing)."""

import pytest

from millrace.uris import display_name, relative_name, s3_event_key, s3_location, s3_uri, wanted


@pytest.mark.unit
@pytest.mark.parametrize("key", ["team/plain-name_1.0.txt", "team/a b.txt", "team/100%.txt", "team/#1?.txt",
                                 "team/a+b.txt", "team/[x].txt", "team/café.txt"])
def test_s3_uris_round_trip_and_ordinary_keys_are_unchanged(key):
    uri = s3_uri("docs", key)
    assert s3_location(uri) == ("docs", key)
    assert display_name(uri) == key.rsplit("/", 1)[1]
    assert relative_name("s3://docs/team", uri) == key.split("/", 1)[1]
    if key == "team/plain-name_1.0.txt":
        assert uri == "s3://docs/team/plain-name_1.0.txt"
    else:
        assert not set(uri[len("s3://docs/"):]) & set(" %#?+[]é") - {"%"}


@pytest.mark.unit
def test_helpers():
    assert s3_event_key("team/audit+report%2B1.txt") == "team/audit report+1.txt"
    assert s3_event_key("caf%C3%A9+notes.txt") == "café notes.txt"
    assert display_name("file:///data/corpus.jsonl#doc%2F7") == "corpus.jsonl#doc/7"
    assert display_name("s3://bucket") == "bucket"
    assert relative_name("file:///data/corpus.jsonl", "file:///data/corpus.jsonl#7") == "corpus.jsonl"
    assert relative_name("file:///a/b", "file:///a/bc/x.txt") is None  # a sibling that shares a prefix
    assert relative_name("s3://docs/team", "s3://docs/other/x.txt") is None
    assert relative_name("s3://docs/team/a%20b.pdf", "s3://docs/team/a%20b.pdf") == "a b.pdf"
    assert wanted("drafts/Budget 2027 (draft v2).pdf", [], ["*draft v2*"]) is False
    assert wanted("a b/c d.pdf", ["a b/*.pdf"], []) is True and wanted("c d.txt", ["*.pdf"], []) is False
