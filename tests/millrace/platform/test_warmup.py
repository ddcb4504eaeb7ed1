"""A process warmed up has loaded what every batch needs, so its first batch pays none of it."""

import pytest

from millrace import clients
from millrace.config import Settings
from millrace.platform.warmup import warm_up

pytestmark = pytest.mark.integration


def test_warm_up_loads_the_model_the_gates_and_the_s3_client_only_where_s3_is_configured(tmp_path, moto_s3):
    local = Settings(home=tmp_path / "a")
    assert set(warm_up(local, extractor=False)) == {"model", "quality"}
    remote = Settings(home=tmp_path / "b", s3_endpoint_url=moto_s3, s3_key="testing", s3_secret="testing",
                      s3_region="us-east-1")
    took = warm_up(remote, extractor=False)
    assert set(took) == {"model", "quality", "s3"}
    fs = clients.s3_filesystem(remote)
    assert fs._s3 is not None  # its botocore client exists (s3fs makes it on first use): no batch builds it
    assert clients.s3_filesystem(remote) is fs
