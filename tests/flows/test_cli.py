import json
import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from flows.cli import main
from flows.options import flow_options
from millrace.config import Settings

pytestmark = pytest.mark.integration


def list_attempts(source: str) -> list[int]:
    """How many times Prefect ran the `list-source` task for this source (its run_count per task run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[f"list {source}"])))
    return [r.run_count for r in runs]


def run_json(capsys, *args) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ingest_search_status_json_contracts(sample_dir, settings, capsys):
    summary = run_json(capsys, "ingest", str(sample_dir), "--collection", settings.collection)
    assert {"seen", "indexed", "skipped", "failed", "deleted", "chunks_written", "seconds"} <= set(summary)
    assert (summary["seen"], summary["indexed"], summary["failed"]) == (9, 7, 2)

    found = run_json(capsys, "search", "turbine controller reset button", "-k", "2", "--collection", settings.collection)
    assert len(found["hits"]) == 2
    top = found["hits"][0]
    assert {"score", "doc_id", "source_uri", "title", "page", "text"} <= set(top)
    assert top["source_uri"].endswith("controller-faq.html") and "reset" in top["text"]
    assert found["mode"] == "hybrid"  # auto: the Lite collection has its BM25 field
    for mode in ["dense", "bm25"]:
        alone = run_json(capsys, "search", "turbine controller reset button", "-k", "1", "--mode", mode,
                         "--collection", settings.collection)
        assert alone["mode"] == mode and alone["hits"][0]["source_uri"].endswith("controller-faq.html")

    status = run_json(capsys, "status", "--collection", settings.collection)
    assert status["counts"] == {"indexed": 7, "failed": 2}
    failed = {d["source_uri"].rsplit("/", 1)[1]: d for d in status["documents"] if d["state"] == "failed"}
    assert failed["empty-notes.txt"]["reason"] == "empty" and failed["empty-notes.txt"]["chunks"] == 0
    assert {"doc_id", "source_uri", "state", "reason", "chunks"} <= set(status["documents"][0])


def test_missing_source_folder_is_one_line_and_not_retried(settings, capsys, tmp_path):
    missing = str(tmp_path / "nope")
    assert main(["ingest", missing, "--collection", settings.collection]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("millrace: error: source folder") and "does not exist" in err[-1]
    assert list_attempts(missing) == [1]  # a configuration error is not retried


def test_missing_model_path_is_a_clear_error(settings, capsys, tmp_path):
    assert main(["search", "anything", "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert "millrace: error: model path" in err and "does not exist" in err


def test_search_before_any_ingest_says_what_to_do(settings, capsys):
    assert main(["search", "anything", "--collection", settings.collection]) == 2
    assert "run `millrace ingest` first" in capsys.readouterr().err


def test_bad_s3_credentials_are_one_line_and_not_retried(settings, capsys, monkeypatch):
    """A moto S3 server that enforces authentication (INITIAL_NO_AUTH_ACTION_COUNT=0) refuses unknown keys."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import free_port, wait_port

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        monkeypatch.setenv("MILLRACE_S3_KEY", "AKIANOTAREALKEY00000")
        monkeypatch.setenv("MILLRACE_S3_SECRET", "wrong")
        monkeypatch.setenv("MILLRACE_S3_REGION", "us-east-1")
        source = f"s3://docs/{settings.collection}"  # unique: the session's Prefect API holds other tests' runs
        code = main(["ingest", source, "--s3-endpoint-url", f"http://127.0.0.1:{port}",
                     "--collection", settings.collection])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and err.startswith(f"millrace: error: S3 refused {source}: check the credentials")
        assert list_attempts(source) == [1]
    finally:
        proc.terminate()
        proc.wait(10)


def test_search_and_status_run_without_prefect(tmp_path):
    """The Prefect-free commands of the `millrace` entry point never import Prefect (nor the flows, tasks, blocks)."""
    code = f"""
import contextlib, io, json, sys
from flows.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    assert main(["status", "--json", "--home", {str(tmp_path / "home")!r}]) == 0
assert json.loads(out.getvalue())["counts"] == {{}}
assert main(["search", "anything", "--home", {str(tmp_path / "home")!r}]) == 2  # nothing ingested yet
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "prefect_dask", "tasks", "blocks")
                or m in ("flows.ingest", "flows.evaluate", "flows.api", "flows.bench"))
assert not loaded, loaded
"""
    env = {k: v for k, v in os.environ.items() if k not in ("MILLRACE_BLOCKS", "MILLRACE_HOME")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run `millrace ingest` first" in done.stderr
    assert "milvus_proxy" not in done.stderr  # no search reached Milvus Lite, whose server logs a missing schema


def test_block_names_are_refused_by_the_core_cli(tmp_path, monkeypatch, capsys):
    """millrace.cli cannot read Prefect blocks; it says so rather than silently using other settings."""
    from millrace import cli

    monkeypatch.setenv("MILLRACE_BLOCKS", "prod")
    assert cli.main(["status", "--home", str(tmp_path)]) == 2
    assert "read by the `millrace` command" in capsys.readouterr().err
    monkeypatch.delenv("MILLRACE_BLOCKS")
    assert cli.main(["ingest", str(tmp_path)]) == 2  # flow commands live in flows.cli
    assert "runs a Prefect flow" in capsys.readouterr().err


def test_flow_options_carry_no_secrets(monkeypatch):
    monkeypatch.delenv("MILLRACE_MODEL_CACHE", raising=False)  # the session's shared export (tests/conftest.py)
    s = Settings(milvus_uri="http://milvus:19530", milvus_token=SecretStr("root:Milvus"), s3_key="AKIA",
                 s3_secret=SecretStr("s3cr3t"), ledger_url="postgresql://millrace:hunter2@db/millrace", chunk_size=128)
    options = flow_options(s)
    assert options == {"milvus_uri": "http://milvus:19530", "s3_key": "AKIA", "chunk_size": 128}
    dumped = json.dumps(options)
    assert "root:Milvus" not in dumped and "s3cr3t" not in dumped and "hunter2" not in dumped and "***" not in dumped
    assert "collection" not in flow_options(Settings(collection="c"), drop=("collection",))
    assert flow_options(Settings(ledger_url="sqlite:////tmp/l.sqlite"))["ledger_url"] == "sqlite:////tmp/l.sqlite"


def test_bad_input_on_a_fresh_machine_is_a_sentence_not_a_traceback(tmp_path):
    """A new user's shell: no Prefect API configured, so the command starts one; the failed run's traceback stays in
    the run's logs, the terminal gets millrace's sentence."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MILLRACE_"))}
    env.update(HOME=str(tmp_path), MILLRACE_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(tmp_path / "missing")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == f"millrace: error: source folder {tmp_path / 'missing'} does not exist"
