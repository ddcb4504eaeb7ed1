"""Any file or object name round-trips: canonical URIs, decoding before opening, folder walks and S3 listings."""

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from millrace.config import Settings
from millrace.documents.records import doc_id_for
from millrace.sources.base import LocalSource, open_source
from millrace.sources.s3 import S3Source
from millrace.uris import (canonical_source_uri, display_name, path_to_uri, relative_name, s3_location, s3_uri,
                           uri_to_path)

NAMES = ["audit report.txt", "café notes.txt", "100% #1 ?.txt", "a+b [x] (v2).txt", "Übersicht Mai.docx",
         "Budget 2027 (draft v2).pdf", "semi;colon,comma&amp=eq.txt", "日本語.txt"]


@pytest.mark.unit
@pytest.mark.parametrize("name", NAMES)
def test_local_names_round_trip(tmp_path, name):
    path = tmp_path / "sub dir" / name
    path.parent.mkdir()
    path.write_bytes(name.encode())
    uri = path_to_uri(path)
    assert uri == path.as_uri() and " " not in uri and "#" not in uri and "?" not in uri
    assert uri_to_path(uri) == path
    assert display_name(uri) == name
    assert relative_name(path_to_uri(tmp_path), uri) == f"sub dir/{name}"
    [obj] = LocalSource(tmp_path).list()
    assert obj.uri == uri and obj.doc_id == doc_id_for(uri)  # the same name, the same id, every time
    assert LocalSource(tmp_path).read(obj) == name.encode()


@pytest.mark.unit
def test_a_name_that_is_not_utf8_round_trips(tmp_path):
    path = tmp_path / os.fsdecode(b"caf\xe9 latin-1.txt")
    path.write_bytes(b"x")
    [obj] = LocalSource(tmp_path).list()
    assert "%E9" in obj.uri and LocalSource(tmp_path).read(obj) == b"x"


@pytest.mark.unit
def test_canonical_source_uris(tmp_path):
    folder = tmp_path / "my docs"
    folder.mkdir()
    uri = folder.resolve().as_uri()
    assert canonical_source_uri(str(folder)) == uri == canonical_source_uri(uri) == canonical_source_uri(uri + "/")
    assert canonical_source_uri(f"file://{folder}") == uri  # typed undecoded
    assert canonical_source_uri("s3://docs/my team/") == "s3://docs/my%20team"  # a raw key prefix
    assert canonical_source_uri("s3://docs") == "s3://docs" == canonical_source_uri("s3://docs/")
    assert open_source(uri, Settings()).uri == uri


@pytest.mark.unit
def test_folder_walk_is_sorted_and_skips_hidden_files_links_and_fifos(tmp_path):
    for rel in ["b.txt", "a/z.txt", "a/b.txt", ".hidden/x.txt", "a/.secret.txt", "c d/e.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / "link.txt").symlink_to(tmp_path / "b.txt")
    (tmp_path / "linked dir").symlink_to(tmp_path / "a")
    os.mkfifo(tmp_path / "pipe")
    names = [relative_name(path_to_uri(tmp_path), o.uri) for o in LocalSource(tmp_path).list()]
    assert names == ["a/b.txt", "a/z.txt", "b.txt", "c d/e.txt"]
    only = LocalSource(tmp_path, include=["c d/*"], exclude=["*z*"]).list()
    assert [display_name(o.uri) for o in only] == ["e.txt"]
    single = list(LocalSource(tmp_path / "c d" / "e.txt").list())
    assert [display_name(o.uri) for o in single] == ["e.txt"]


@pytest.mark.unit
def test_followed_links_are_read_under_their_own_path_and_each_folder_once(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "doc.txt").write_text("real")
    (root / "real" / "loop").symlink_to(root)  # a cycle back to the root
    (root / "z link").symlink_to(root / "real")  # a second way into a folder already walked
    (tmp_path / "outside.txt").write_text("outside")
    (root / "linked file.txt").symlink_to(tmp_path / "outside.txt")
    (root / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    source = open_source(str(root), Settings(follow_symlinks=True))
    objs = list(source.list())
    assert [relative_name(source.uri, o.uri) for o in objs] == ["linked file.txt", "real/doc.txt"]
    assert source.read(objs[0]) == b"outside" and objs[0].uri == path_to_uri(root / "linked file.txt")
    assert [relative_name(source.uri, o.uri) for o in open_source(str(root), Settings()).list()] == ["real/doc.txt"]


@pytest.mark.unit
def test_a_file_deleted_during_the_listing_is_skipped(tmp_path):
    for name in ["a.txt", "b.txt", "c.txt"]:
        (tmp_path / name).write_text(name)
    listing = LocalSource(tmp_path).list()
    first = next(listing)  # the walk has read the folder: b.txt is already on its list
    (tmp_path / "b.txt").unlink()
    assert [display_name(o.uri) for o in [first, *listing]] == ["a.txt", "c.txt"]


S3_KEYS = ["my docs/audit report.txt", "my docs/café notes.txt", "my docs/100% #1?.txt", "my docs/a+b [x].txt",
           "my docs/sub dir/Übersicht Mai.md", "my docs/plain.txt"]


@pytest.fixture()
def bucket(moto_s3, monkeypatch):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    name = f"odd-names-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    for key in S3_KEYS + ["my docs2/outside.txt", "other/x.txt"]:
        s3.put_object(Bucket=name, Key=key, Body=key.encode())
    yield name
    for key in S3_KEYS + ["my docs2/outside.txt", "other/x.txt"]:
        s3.delete_object(Bucket=name, Key=key)
    s3.delete_bucket(Bucket=name)


def s3_settings(endpoint: str, **kw) -> Settings:
    return Settings(s3_endpoint_url=endpoint, s3_key="testing", s3_secret="testing", s3_region="us-east-1",
                    retry_delays=[0.01, 0.01], **kw)


@pytest.mark.integration
def test_s3_keys_with_any_name_list_and_read(moto_s3, bucket):
    source = open_source(f"s3://{bucket}/my docs/", s3_settings(moto_s3))
    assert isinstance(source, S3Source) and source.uri == f"s3://{bucket}/my%20docs"
    objs = list(source.list())
    assert sorted(relative_name(source.uri, o.uri) for o in objs) == sorted(k[len("my docs/"):] for k in S3_KEYS)
    for obj in objs:
        _, key = s3_location(obj.uri)
        assert source.read(obj) == key.encode() and obj.doc_id == doc_id_for(s3_uri(bucket, key))
    picked = open_source(f"s3://{bucket}/my docs", s3_settings(moto_s3, include=["sub dir/*"])).list()
    assert [display_name(o.uri) for o in picked] == ["Übersicht Mai.md"]
    [single] = open_source(f"s3://{bucket}/my docs/café notes.txt", s3_settings(moto_s3)).list()  # raw, as typed
    assert display_name(single.uri) == "café notes.txt"


@pytest.mark.integration
def test_the_shared_s3_filesystem_never_serves_a_stale_listing(moto_s3, bucket):
    """Sources of one process share an s3fs filesystem (millrace.clients); what it lists is the bucket as it is now."""
    import boto3

    from millrace import clients

    s = s3_settings(moto_s3)
    s3 = boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    first = {display_name(o.uri) for o in open_source(f"s3://{bucket}/my docs", s).list()}
    s3.put_object(Bucket=bucket, Key="my docs/sub dir/new #1.txt", Body=b"new")
    s3.delete_object(Bucket=bucket, Key=S3_KEYS[0])
    try:
        again = open_source(f"s3://{bucket}/my docs", s)
        assert again.fs is open_source(f"s3://{bucket}/my docs", s).fs is clients.s3_filesystem(s)
        now = {display_name(o.uri) for o in again.list()}
        assert "new #1.txt" in now and len(now) == len(first)  # one added, one deleted
        [obj] = [o for o in again.list() if display_name(o.uri) == "new #1.txt"]
        assert again.read(obj) == b"new"
        # Named lookups (an event's keys) go through info(), which a listings cache would answer from the find above.
        named = {display_name(o.uri) for o in again.named([S3_KEYS[0][len("my docs/"):], "sub dir/new #1.txt"])}
        assert named == {"new #1.txt"}
    finally:  # the fixture removes S3_KEYS and then the bucket
        s3.delete_object(Bucket=bucket, Key="my docs/sub dir/new #1.txt")


class _SlowDown(BaseHTTPRequestHandler):
    """Answers every request as a throttled S3 does: 503 SlowDown."""

    requests: list[str] = []

    def _reply(self):
        type(self).requests.append(f"{self.command} {self.path}")
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = _reply

    def log_message(self, *args):
        pass


@pytest.mark.integration
def test_s3_reads_are_retried_in_one_layer_only():
    """botocore and s3fs must not retry underneath ours: a throttled read costs exactly len(delays) + 1 requests."""
    from millrace.documents.records import SourceObject

    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowDown)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = S3Source("s3://bucket/prefix", s3_settings(f"http://127.0.0.1:{server.server_port}"))
        _SlowDown.requests.clear()
        with pytest.raises(OSError):
            source.read(SourceObject.make(s3_uri("bucket", "prefix/a b.txt"), 1, "e"))
        assert len(_SlowDown.requests) == 3 and all("/bucket/prefix/a%20b.txt" in r for r in _SlowDown.requests)
    finally:
        server.shutdown()
        server.server_close()
