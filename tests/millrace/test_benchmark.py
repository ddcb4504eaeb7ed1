import gzip
import json

import pytest

from millrace.benchmark import corpus_source, take

pytestmark = pytest.mark.unit

RECORDS = [{"_id": str(i), "title": f"Note {i}", "text": f"Pump {i} needs new seals every {i + 2} months. " * (1 + i % 4)}
           for i in range(24)]


def test_take_copies_the_first_documents_of_records_or_folders(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    with gzip.open(beir / "corpus.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in RECORDS)
    assert corpus_source(beir) == beir / "corpus.jsonl.gz"
    part = take(beir, 5, tmp_path)
    assert [json.loads(line)["_id"] for line in part.read_text().splitlines()] == ["0", "1", "2", "3", "4"]
    docs = tmp_path / "docs"
    for name in ["b.txt", "a.txt", "sub/c.txt", ".hidden"]:
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(name)
    out = tmp_path / "out"
    out.mkdir()
    copied = take(docs, 2, out)
    assert sorted(p.name for p in copied.rglob("*") if p.is_file()) == ["a.txt", "b.txt"]
    assert take(docs, None, out) == docs
