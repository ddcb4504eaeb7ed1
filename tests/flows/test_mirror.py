"""The mirror holds on real folders: messy names, scoped runs, transient failures, a property-based state machine."""

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings as hsettings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from flows.ingest import ingest
from millrace import clients
from millrace.config import load_settings
from millrace.documents.records import doc_id_for
from millrace.search import Retriever, cite
from millrace.uris import path_to_uri, uri_to_path
from tests.hooks.faults import Faults

pytestmark = pytest.mark.integration

MESSY = ["audit report.txt", "café notes.txt", "Budget 2027 (draft v2).md", "50% off + more #1.txt",
         "what? [final].txt", "Übersicht Mai.md", "sub folder/naïve résumé.txt", "sub folder/a&b=c;d.txt",
         ("long " + "é" * 60 + " name " * 20).strip() + ".txt"]


def words(i: int) -> str:
    return (f"Document {i} describes the sluice number {i * 13 % 97} and its keeper, who logs the tide "
            f"height every morning at station {i * 7 % 89} beside the {['mill', 'weir', 'lock', 'quay'][i % 4]}.")


def run(source, settings, **kwargs):
    return ingest(source=str(source), collection=settings.collection, **kwargs)


def rows(settings) -> set[tuple[str, str, str]]:
    store = clients.milvus_store(settings)
    return {(r["doc_id"], r["chunk_id"], r["text"]) for r in store.rows(None, ["chunk_id", "doc_id", "text"])}


def test_messy_names_are_read_cited_and_deleted(tmp_path, settings):
    folder = tmp_path / "My Documents #2"
    for i, name in enumerate(MESSY):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(words(i))
    (folder / ".hidden notes.txt").write_text("hidden " + words(99))
    os.symlink(folder / MESSY[0], folder / "link to audit.txt")

    summary = run(folder, settings)
    assert (summary["seen"], summary["indexed"], summary["failed"]) == (len(MESSY), len(MESSY), 0)
    retriever = Retriever(settings, clients.milvus_store(settings))
    for i, name in enumerate(MESSY):
        top = retriever.search(words(i), k=1)[0]
        assert uri_to_path(top.source_uri) == (folder / name).resolve()
        assert cite(top) == Path(name).name and top.doc_id == doc_id_for(path_to_uri(folder / name))
    (folder / MESSY[1]).unlink()
    again = run(folder, settings)
    assert (again["deleted"], again["processed"], again["reconciled"]) == (1, 0, True)
    assert all(uri_to_path(h.source_uri).name != MESSY[1] for h in retriever.search(words(1), k=10))


def test_filtered_and_subfolder_runs_delete_nothing_outside_their_scope(tmp_path, settings, monkeypatch):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.md", "b.txt", "c.html", "sub/d.md", "sub/e.txt"]):
        (folder / name).write_text(words(i))
    full = run(folder, settings)
    before = rows(settings)
    assert full["indexed"] == 5

    monkeypatch.setenv("MILLRACE_INCLUDE", '["*.md"]')
    only_md = run(folder, load_settings(collection=settings.collection))
    assert (only_md["seen"], only_md["deleted"], only_md["processed"]) == (2, 0, 0)
    assert only_md["scope"]["include"] == ["*.md"]
    monkeypatch.delenv("MILLRACE_INCLUDE")
    sub = run(folder / "sub", settings)
    assert (sub["seen"], sub["deleted"]) == (2, 0) and rows(settings) == before

    (folder / "a.md").unlink()
    (folder / "b.txt").unlink()
    monkeypatch.setenv("MILLRACE_INCLUDE", '["*.md"]')
    scoped = run(folder, load_settings(collection=settings.collection))
    assert scoped["deleted"] == 1  # a.md; b.txt is outside the filter and stays until a run that covers it
    b_id = doc_id_for(path_to_uri(folder / "b.txt"))
    assert any(d == b_id for d, _, _ in rows(settings))
    monkeypatch.delenv("MILLRACE_INCLUDE")
    named = run(folder, settings, objects=["b.txt", "sub/d.md"])
    assert (named["seen"], named["deleted"]) == (1, 1) and not any(d == b_id for d, _, _ in rows(settings))
    from millrace.observe.collection_report import status_report

    last = status_report(settings)["last_run"]
    assert last["scope"]["objects"] == ["b.txt", "sub/d.md"] and last["reconciled"]


def test_a_reparse_that_times_out_keeps_the_previous_version_and_the_next_run_retries_it(tmp_path, settings,
                                                                                         faults_armed):
    folder = tmp_path / "docs"
    folder.mkdir()
    report = folder / "tide report.txt"
    report.write_text(words(1))
    (folder / "other.txt").write_text(words(2))
    run(folder, settings)
    report.write_text(words(1) + " Addendum: the gauge was replaced by a radar sensor.")
    faults_armed.arm(doc_id_for(path_to_uri(report)), "timeout")
    failing = run(folder, load_settings(collection=settings.collection))
    assert (failing["failed"], failing["failures"][0]["reason"], failing["reconciled"]) == (1, "timeout", True)
    retriever = Retriever(settings, clients.milvus_store(settings))
    top = retriever.search(words(1), k=1)[0]
    assert cite(top) == "tide report.txt" and "radar" not in top.text  # the previous version is still served
    from millrace.observe.collection_report import status_report

    doc = next(d for d in status_report(settings)["documents"] if d["source_uri"].endswith("tide%20report.txt"))
    assert doc["state"] == "failed" and doc["reason"] == "timeout" and doc["serving_previous_version"]

    retried = run(folder, load_settings(collection=settings.collection))  # no flag
    assert (retried["processed"], retried["indexed"]) == (1, 1)
    assert "radar" in retriever.search("radar sensor gauge replaced", k=1)[0].text


NAME = st.text(alphabet="abcdeé ü#%+?[]()&'-_", min_size=1, max_size=12).map(str.strip).filter(
    lambda s: s and not s.startswith(("-", ".")))


class MirrorMachine(RuleBasedStateMachine):
    """Random edits to a folder and runs over it; after every run the index must be what it should be."""

    settings_ = None
    base = None

    @initialize()
    def setup(self):
        self.folder = self.base / uuid.uuid4().hex[:8]
        self.faults = Faults()
        self.folder.mkdir()
        self.s = load_settings(collection=f"m_{uuid.uuid4().hex[:8]}")
        self.files: dict[str, str] = {}
        self.n = 0

    def teardown(self):
        self.faults.clear()

    def _write(self, rel: str, text: str) -> None:
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.files[rel] = text

    def _text(self) -> str:
        self.n += 1
        return words(self.n)

    @rule(name=NAME, sub=st.sampled_from(["", "sub/", "Sub Folder/"]), ext=st.sampled_from([".txt", ".md"]))
    def add(self, name, sub, ext):
        self._write(sub + name + ext, self._text())

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def edit(self, data):
        self._write(data.draw(st.sampled_from(sorted(self.files))), self._text())

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def touch(self, data):
        path = self.folder / data.draw(st.sampled_from(sorted(self.files)))
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))

    @precondition(lambda self: self.files)
    @rule(data=st.data(), name=NAME)
    def rename(self, data, name):
        old = data.draw(st.sampled_from(sorted(self.files)))
        new = str(Path(old).with_name(name + Path(old).suffix))
        if new != old and new not in self.files:
            (self.folder / old).rename(self.folder / new)
            self.files[new] = self.files.pop(old)

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def delete(self, data):
        rel = data.draw(st.sampled_from(sorted(self.files)))
        (self.folder / rel).unlink()
        del self.files[rel]

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def fail_next_parse(self, data):
        rel = data.draw(st.sampled_from(sorted(self.files)))
        self.faults.arm(doc_id_for(path_to_uri(self.folder / rel)), "timeout")

    def _run(self, source, **kwargs) -> set[str]:
        """Run an ingest; returns the documents whose injected fault it consumed."""
        armed = self.faults.armed()
        before = rows(self.s)
        summary = ingest(source=str(source), collection=self.s.collection, **kwargs)
        assert summary["reconciled"]
        hit = armed - self.faults.armed()
        after = rows(self.s)
        for doc in hit:  # a transient failure keeps exactly the previous version
            assert {r for r in after if r[0] == doc} == {r for r in before if r[0] == doc}
        return hit

    @rule()
    def full_run(self):
        hit = self._run(self.folder)
        clean = self.s.model_copy(update={"collection": f"clean_{uuid.uuid4().hex[:8]}"})
        with self.faults.set_aside():  # the clean run meets no fault
            ingest(source=str(self.folder), collection=clean.collection)
        want = {r for r in rows(clean) if r[0] not in hit}
        assert {r for r in rows(self.s) if r[0] not in hit} == want
        clients.milvus_store(clean).client.drop_collection(clean.collection)

    @rule(kind=st.sampled_from(["include", "sub"]))
    def scoped_run(self, kind):
        before = rows(self.s)
        if kind == "sub":
            if not (self.folder / "sub").is_dir():
                return
            prefix = path_to_uri(self.folder / "sub") + "/"
            self._run(self.folder / "sub")
            outside = lambda r: not uri_of(self.s, r[0]).startswith(prefix)  # noqa: E731
        else:
            self._run(self.folder, options={"include": ["*.md"]})
            outside = lambda r: not uri_of(self.s, r[0]).endswith(".md")  # noqa: E731
        assert {r for r in rows(self.s) if outside(r)} == {r for r in before if outside(r)}


def uri_of(settings, doc_id: str) -> str:
    return clients.ledger(settings).rows_for(settings.collection, [doc_id])[doc_id]["source_uri"]


@pytest.mark.slow
def test_the_index_mirrors_the_folder_under_random_edits_names_scopes_and_faults(tmp_path, settings, monkeypatch):
    monkeypatch.setenv("MILLRACE_TRANSIENT_BACKOFF_S", "0")  # every full run retries what failed transiently
    MirrorMachine.base = tmp_path
    MirrorMachine.TestCase.settings = hsettings(max_examples=4, stateful_step_count=9, deadline=None,
                                                 suppress_health_check=list(HealthCheck))
    MirrorMachine.TestCase().runTest()


def test_s3_keys_that_need_encoding_are_indexed_cited_and_deleted_by_a_named_run(s3_env, settings):
    from millrace.uris import s3_event_key, s3_location, s3_uri

    s3 = s3_env
    bucket = f"messy-{uuid.uuid4().hex[:6]}"
    s3.create_bucket(Bucket=bucket)
    keys = [f"in box/{name}" for name in MESSY[:6]]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=words(i).encode())
    settings = load_settings(collection=settings.collection)
    first = run(f"s3://{bucket}/in box", settings)
    assert (first["seen"], first["indexed"]) == (6, 6)
    retriever = Retriever(settings, clients.milvus_store(settings))
    for i, key in enumerate(keys):
        top = retriever.search(words(i), k=1)[0]
        assert top.source_uri == s3_uri(bucket, key) and s3_location(top.source_uri) == (bucket, key)
        assert cite(top) == key.rsplit("/", 1)[1]

    # An S3 event names its key URL-encoded, '+' for a space: decoded, it scopes a run to that one object.
    event_key = "in+box/50%25+off+%2B+more+%231.txt"
    assert s3_event_key(event_key) == keys[3]
    s3.delete_object(Bucket=bucket, Key=keys[3])
    s3.put_object(Bucket=bucket, Key=keys[0], Body=b"changed, but not named by the event")
    named = run(f"s3://{bucket}/in box", settings, objects=[s3_event_key(event_key).removeprefix("in box/")])
    assert (named["seen"], named["deleted"], named["processed"]) == (0, 1, 0)
    assert retriever.search(words(0), k=1)[0].source_uri == s3_uri(bucket, keys[0])  # untouched: not named
    assert all(h.source_uri != s3_uri(bucket, keys[3]) for h in retriever.search(words(3), k=10))
