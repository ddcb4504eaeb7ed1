"""The whole local platform (millrace.platform.control: Prefect server and UI, Milvus standalone, Dask scheduler and worker,
the `millrace` process work pool and worker, the S3 event relay), started ONCE per session on free ports under a
temporary MILLRACE_HOME, deployed from prefect.yaml, and stopped at the end with nothing left running."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from tests.conftest import free_port

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Platform:
    ep: Any  # millrace.platform.control.Endpoints
    api: httpx.Client

    def tail(self, *services: str, lines: int = 40) -> str:
        from millrace.platform.procs import tail

        return "".join(f"\n--- tail of {self.ep.log(s)} ---\n{tail(self.ep.log(s), lines)}" for s in services)

    def wait(self, what: str, probe: Callable[[], Any], timeout: float, logs: tuple[str, ...], every: float = 1.0):
        """Poll `probe` until it returns something truthy (returned); on timeout fail with the services' logs."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                if value := probe():
                    return value
            except Exception as exc:  # not ready yet (collection missing, connection refused): ask again
                last = f"{type(exc).__name__}: {str(exc)[:300]}"
            time.sleep(every)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last})" if last else "")
                    + self.tail(*logs), pytrace=False)

    def deployment_id(self, name: str) -> str:
        answer = self.api.get(f"/deployments/name/{name}")
        assert answer.status_code == 200, f"deployment {name} not on the server: {answer.text[:300]}"
        return answer.json()["id"]

    def runs_of(self, deployment: str) -> list[dict]:
        body = {"flow_runs": {}, "deployments": {"id": {"any_": [self.deployment_id(deployment)]}}, "limit": 200}
        answer = self.api.post("/flow_runs/filter", json=body)
        answer.raise_for_status()
        return answer.json()

    def run(self, run_id: str) -> dict:
        answer = self.api.get(f"/flow_runs/{run_id}")
        answer.raise_for_status()
        return answer.json()

    def wait_run(self, run_id: str, timeout: float = 420) -> dict:
        """Wait for a flow run to finish; fail unless it COMPLETED, with the worker's and the Dask logs."""
        run = self.wait(f"flow run {run_id} to finish", lambda: (r := self.run(run_id))["state_type"] in TERMINAL and r,
                        timeout, ("prefect-worker", "dask-workers"))
        assert run["state_type"] == "COMPLETED", (f"flow run {run['name']} ended {run['state_type']}: "
                                                  f"{run['state'].get('message')}" + self.tail("prefect-worker"))
        return run

    def artifacts(self, run_id: str) -> dict[str, dict]:
        answer = self.api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        answer.raise_for_status()
        return {a["key"]: a for a in answer.json() if a.get("key")}

    def cli_env(self) -> dict[str, str]:
        """The environment an operator's shell gets from the `export` lines `make server` prints."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        return {**env, **dict(shlex.split(line)[1].split("=", 1) for line in self.ep.exports())}


def distinct_free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


# Package scope: the platform's Milvus standalone must be gone before tests/flows starts its own (two Milvus
# standalone servers cannot run at once here: both bind etcd's ports 2379/2380).
@pytest.fixture(scope="package")
def platform(tmp_path_factory, moto_s3):
    from millrace.platform import control as mp
    from millrace.platform.procs import marked

    home = tmp_path_factory.mktemp("platform") / "home"
    env = {var: str(port) for (var, _), port in zip(mp.PORTS.values(), distinct_free_ports(len(mp.PORTS)))}
    env.update({
        # One warm worker process is enough here (two cores); flows read S3 from the session's moto server.
        "MILLRACE_DASK_WORKERS": "1", "MILLRACE_DASK_THREADS": "2", "MILLRACE_S3_ENDPOINT_URL": moto_s3,
        "MILLRACE_S3_KEY": "testing", "MILLRACE_S3_SECRET": "testing", "MILLRACE_S3_REGION": "us-east-1",
        "MILLRACE_RETRY_DELAYS": "[0.5, 1.0]",
        # A 2 s quiet period (default 1 s): a burst of uploads stays one batch on a loaded two-core machine too.
        "MILLRACE_RELAY_DEBOUNCE_S": "2"})
    ep = mp.start(home, extra_env=env, timeout=480, say=lambda line: print(line, file=sys.stderr))
    api = httpx.Client(base_url=ep.api_url, timeout=30)
    try:
        yield Platform(ep, api)
    finally:
        api.close()
        mp.stop(home)
        left = marked(home)
        assert not left, f"processes left after stop: {[p.cmdline() for p in left]}"


@pytest.fixture(scope="package")
def backfill(platform, request) -> dict:
    """One `ingest/backfill` run of the sample documents, triggered as an operator would, completed."""
    from millrace.sources.samples import write_samples

    # A short, readable path: it is the run's name in the UI screenshots of the docs.
    samples = Path(tempfile.mkdtemp(prefix="millrace-")) / "sample docs"
    write_samples(samples)
    request.addfinalizer(lambda: shutil.rmtree(samples.parent, ignore_errors=True))
    done = subprocess.run([str(Path(sys.executable).parent / "prefect"), "deployment", "run", "ingest/backfill",
                           "-p", f"source={samples}", "-p", "collection=backfill_docs"],
                          env=platform.cli_env(), capture_output=True, text=True, timeout=180)
    found = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)
    assert done.returncode == 0 and found, f"`prefect deployment run` failed:\n{done.stdout}\n{done.stderr}"
    run = platform.wait_run(found.group(1))
    return {**run, "samples": samples}
