"""What the local platform (millrace.platform.control) runs: its ports, the endpoints it prints, the environment its services
get, the relay's token. Data and files only; starting and stopping are millrace.platform.control's."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from millrace.config import load_settings
from millrace.platform import procs

REPO = Path(__file__).resolve().parents[2]
POOL = "millrace"
# Each port: its variable and default.
PORTS = {"prefect": ("MILLRACE_PREFECT_PORT", 4200), "milvus": ("MILLRACE_MILVUS_PORT", 19530),
         "dask": ("MILLRACE_DASK_PORT", 8786), "dask-dashboard": ("MILLRACE_DASK_DASHBOARD_PORT", 8787),
         "relay": ("MILLRACE_RELAY_PORT", 8900), "api": ("MILLRACE_SERVE_PORT", 8000)}
# Inherited variables that would point the services away from this home (a test harness's database, a profile).
DROPPED = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_PROFILES_PATH",
           "PREFECT_PROFILE", "PREFECT_API_KEY", "MILLRACE_RELAY_TOKEN")


@dataclass
class Endpoints:
    home: Path
    ports: dict[str, int]
    dask_workers: int
    dask_threads: int
    deployments: list[str] = field(default_factory=list)
    startup_s: float = 0.0

    ui_url = property(lambda self: f"http://127.0.0.1:{self.ports['prefect']}")
    api_url = property(lambda self: f"{self.ui_url}/api")
    milvus_uri = property(lambda self: f"http://127.0.0.1:{self.ports['milvus']}")
    dask_address = property(lambda self: f"tcp://127.0.0.1:{self.ports['dask']}")
    dask_dashboard = property(lambda self: f"http://127.0.0.1:{self.ports['dask-dashboard']}/status")
    relay_url = property(lambda self: f"http://127.0.0.1:{self.ports['relay']}")
    token_file = property(lambda self: self.home / "relay.token")
    serve_url = property(lambda self: f"http://127.0.0.1:{self.ports['api']}")
    logs = property(lambda self: self.home / "logs")

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def exports(self) -> list[str]:
        values = {"PREFECT_API_URL": self.api_url, "MILLRACE_HOME": str(self.home), "MILLRACE_MILVUS_URI": self.milvus_uri,
                  "MILLRACE_DASK_ADDRESS": self.dask_address}
        return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]

    def describe(self) -> str:
        token = self.token_file.read_text().strip()
        lines = [
            f"Millrace platform up in {self.startup_s:.0f} s, state in {self.home}",
            f"  Prefect UI      {self.ui_url}",
            f"  Prefect API     {self.api_url}",
            f"  Milvus          {self.milvus_uri}",
            f"  Dask scheduler  {self.dask_address}  ({_n(self.dask_workers, 'worker')} x "
            f"{_n(self.dask_threads, 'thread')}; dashboard {self.dask_dashboard})",
            f"  S3 event relay  {self.relay_url}  (SNS subscription: {self.relay_url}/s3/events?token=<token>)",
            f"  relay token     {token}  (in {self.token_file})",
            f"  search/answer   {self.serve_url}  (page at /, OpenAI base URL {self.serve_url}/v1; answers need "
            "MILLRACE_LLM_URL set before `make server`)",
            f"  logs            {self.logs}/",
            f"  deployments     {', '.join(self.deployments) or '(none)'}  (work pool {POOL})",
            "Point your shell at it:", *(f"  {line}" for line in self.exports()),
            "`make stop` (python -m millrace.platform stop) stops everything."]
        return "\n".join(lines)

    def save(self, pid: int) -> None:
        state = {**asdict(self), "home": str(self.home), "pid": pid, "pid_started": psutil.Process(pid).create_time()}
        (self.home / "platform.json").write_text(json.dumps(state, indent=2))
        (self.home / "platform.pid").write_text(f"{pid}\n")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def resolve_home(home: Path | str | None) -> Path:
    return Path(home or load_settings().home).expanduser().resolve()


def layout(home: Path, env: dict[str, str]) -> Endpoints:
    """Ports from MILLRACE_*_PORT, Dask workers from MILLRACE_DASK_WORKERS/THREADS (like a run's LocalCluster: one
    single-threaded process per core, at most 8, each holding a model and a JVM)."""
    cores = os.cpu_count() or 1
    ports = {name: int(env.get(var) or default) for name, (var, default) in PORTS.items()}
    workers = int(env.get("MILLRACE_DASK_WORKERS") or 0) or max(1, min(cores, 8))
    return Endpoints(home, ports, workers, int(env.get("MILLRACE_DASK_THREADS") or 0) or max(1, cores // workers))


def running(home: Path) -> tuple[Endpoints, psutil.Process] | None:
    """The saved endpoints and honcho process of the platform of `home`, if its honcho is alive."""
    try:
        state = json.loads((home / "platform.json").read_text())
        proc = psutil.Process(state.pop("pid"))
        if abs(proc.create_time() - state.pop("pid_started")) > 1 or not procs.alive(proc):
            return None  # the pid was reused, or honcho died
    except (OSError, ValueError, KeyError, psutil.Error):
        return None
    return Endpoints(**{**state, "home": home}), proc


def service_env(ep: Endpoints, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update(extra or {})
    env.update({
        procs.MARKER: str(ep.home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # prefect, dask, python of this venv
        "MILLRACE_HOME": str(ep.home), "MILLRACE_LOGS": str(ep.logs), "MILLRACE_REPO": str(REPO),
        "MILLRACE_PREFECT_PORT": str(ep.ports["prefect"]), "MILLRACE_SERVER_PORT": str(ep.ports["milvus"]),
        "MILLRACE_DASK_PORT": str(ep.ports["dask"]), "MILLRACE_DASK_DASHBOARD_PORT": str(ep.ports["dask-dashboard"]),
        "MILLRACE_RELAY_PORT": str(ep.ports["relay"]), "MILLRACE_SERVE_PORT": str(ep.ports["api"]),
        "MILLRACE_DASK_WORKERS": str(ep.dask_workers), "MILLRACE_DASK_THREADS": str(ep.dask_threads),
        "MILLRACE_WORKER_NAME": f"millrace-{socket.gethostname()}",
        # Flow runs use the standing services, not a Milvus Lite file and a LocalCluster of their own.
        "MILLRACE_MILVUS_URI": ep.milvus_uri, "MILLRACE_DASK_ADDRESS": ep.dask_address,
        "PREFECT_HOME": str(ep.home / "prefect"), "PREFECT_API_URL": ep.api_url, "PREFECT_UI_API_URL": ep.api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no internet here, and none needed
        "PREFECT_LOGGING_LEVEL": "INFO",  # run logs below this level never reach the UI
        # The worker's default poll is 10 s: with 2 a triggered or manual run starts within seconds.
        "PREFECT_WORKER_QUERY_SECONDS": env.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
        "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
    })
    return env


def relay_token(home: Path) -> str:
    """The relay's token, made on first start (or taken from MILLRACE_RELAY_TOKEN then) and kept, owner-only."""
    path = home / "relay.token"
    if not path.exists():
        token = os.environ.get("MILLRACE_RELAY_TOKEN") or secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
    os.chmod(path, 0o600)
    return path.read_text().strip()
