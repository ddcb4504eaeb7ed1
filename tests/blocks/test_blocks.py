import pytest
from pydantic import SecretStr

from blocks import EmbedderBlock, MilvusBlock, S3SourceBlock, TikaBlock, load_settings
from millrace import config

pytestmark = pytest.mark.integration  # blocks are saved to and loaded from the session's Prefect API


@pytest.fixture(scope="module")
def saved_blocks(prefect_api):
    MilvusBlock(uri="http://milvus.internal:19530", token=SecretStr("root:Milvus"), index_type="HNSW").save(
        "prod", overwrite=True)
    TikaBlock(endpoint="http://tika.internal:9998", timeout_s=30).save("prod", overwrite=True)
    return "prod"


def test_blocks_fill_what_flags_and_env_leave_unset(saved_blocks, monkeypatch):
    monkeypatch.setenv("MILLRACE_BLOCKS", saved_blocks)
    s = load_settings()
    assert s.milvus_uri == "http://milvus.internal:19530" and s.milvus_token.get_secret_value() == "root:Milvus"
    assert (s.milvus_index, s.tika_endpoint, s.parse_timeout_s) == ("HNSW", "http://tika.internal:9998", 30)
    assert s.model == ""  # no embedder block saved under that name: defaults stay

    monkeypatch.setenv("MILLRACE_TIKA_ENDPOINT", "http://tika.env:9998")
    s = load_settings(milvus_uri="http://flag:19530")
    assert (s.milvus_uri, s.tika_endpoint) == ("http://flag:19530", "http://tika.env:9998")


def test_no_block_name_means_prefect_is_not_consulted(saved_blocks, monkeypatch):
    monkeypatch.delenv("MILLRACE_BLOCKS", raising=False)
    assert load_settings().milvus_uri == ""
    assert load_settings(blocks=saved_blocks).milvus_uri == "http://milvus.internal:19530"  # the --blocks flag


def test_the_core_settings_never_read_blocks(saved_blocks, monkeypatch):
    """millrace.config.load_settings is flags > env > defaults only; blocks are the Prefect side's (blocks.load_settings)."""
    monkeypatch.setenv("MILLRACE_BLOCKS", saved_blocks)
    s = config.load_settings()
    assert (s.blocks, s.milvus_uri, s.tika_endpoint) == (saved_blocks, "", "")


def test_the_millrace_command_reads_blocks_only_when_asked(saved_blocks, monkeypatch, tmp_path):
    from flows import cli

    monkeypatch.delenv("MILLRACE_BLOCKS", raising=False)
    assert cli.load_settings().milvus_uri == ""
    assert cli.load_settings(blocks=saved_blocks).milvus_index == "HNSW"
    monkeypatch.setenv("MILLRACE_BLOCKS", saved_blocks)
    assert cli.load_settings(milvus_uri=str(tmp_path / "m.db")).tika_endpoint == "http://tika.internal:9998"


def test_get_client_builds_real_clients(moto_s3, tmp_path):
    import boto3

    model = EmbedderBlock().get_client()
    assert model.encode(["hello"]).shape == (1, 384)
    boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="k", aws_secret_access_key="s",
                 region_name="us-east-1").create_bucket(Bucket="blocks")
    fs = S3SourceBlock(endpoint_url=moto_s3, aws_access_key_id="k", aws_secret_access_key=SecretStr("s"),
                       region_name="us-east-1").get_client()
    fs.pipe("blocks/a.txt", b"x")
    assert fs.ls("blocks") == ["blocks/a.txt"]
    client = MilvusBlock(uri=str(tmp_path / "m.db")).get_client()
    assert client.list_collections() == []
