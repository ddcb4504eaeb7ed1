"""`make server`'s Milvus standalone runs with our settings in the config file it writes."""

from pathlib import Path

import pytest

from millrace.platform.milvus_server import TIME_TICK_MS, configure


@pytest.mark.unit
def test_configure_sets_the_time_tick_once_and_keeps_the_rest():
    from milvus import MilvusServerConfig

    cfg = MilvusServerConfig()
    before = cfg.template_text
    server = type("Server", (), {"config": cfg})()
    configure(server)
    configure(server)  # idempotent: the session fixture and `make server` may both call it
    assert f"timeTickInterval: {TIME_TICK_MS} #" in cfg.template_text
    assert "timeTickInterval: 200 #" not in cfg.template_text
    assert len(cfg.template_text.splitlines()) == len(before.splitlines())


@pytest.mark.integration
def test_the_running_server_was_written_with_it(milvus_server):
    from milvus import default_server

    written = Path(default_server.config.base_data_dir, "configs", "milvus.yaml").read_text()
    proxy = written.split("\nproxy:", 1)[1]
    assert proxy.lstrip("\n").startswith(f"timeTickInterval: {TIME_TICK_MS} ") or \
        f"\n  timeTickInterval: {TIME_TICK_MS} " in proxy.split("\n\n", 1)[0]
