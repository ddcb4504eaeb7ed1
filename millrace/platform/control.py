"""`make server` / `make stop`: the whole local platform, run by honcho from deployments/Procfile.

    python -m millrace.platform start | stop | status

The services: a Prefect server with its UI (SQLite under MILLRACE_HOME/prefect), the Milvus standalone server, a
standing Dask scheduler and workers (warmed up once by millrace.platform.warmup), the `millrace` process work pool with a worker
that runs flows from this checkout against those services, and the S3 event relay (intake/relay.py). All state lives
under MILLRACE_HOME, so the index, the ledger and Prefect's history survive a stop and a start.

The core stays Prefect-free: this module calls the `prefect` command and the server's HTTP API, never imports it."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import httpx
import psutil

from millrace.platform import health, procs
from millrace.platform.services import (POOL, PORTS, REPO, Endpoints, layout, relay_token, resolve_home,  # noqa: F401
                               running, service_env)

PROCFILE = REPO / "deployments" / "Procfile"


class PlatformError(RuntimeError):
    """The platform could not be started or stopped; the message says why, with the relevant log's tail."""


def probes(ep: Endpoints) -> dict[str, tuple[Callable[[], str | None], list[str]]]:
    """Service -> (probe, the logs that explain a failure), in the order they are awaited."""
    return {
        "prefect": (lambda: health.prefect(ep.api_url), ["prefect"]),
        "milvus": (lambda: health.milvus(ep.milvus_uri, ep.ports["milvus"]), ["milvus"]),
        "dask": (lambda: health.dask(ep.dask_address, ep.dask_workers), ["dask-scheduler", "dask-workers"]),
        "prefect-worker": (lambda: health.work_pool(ep.api_url, POOL), ["prefect-worker"]),
        "relay": (lambda: health.http_ok(ep.relay_url), ["relay"]),
        "api": (lambda: health.http_ok(ep.serve_url), ["api"]),
    }


def _tails(ep: Endpoints, logs: list[str], lines: int = 25) -> str:
    return "".join(f"\n--- tail of {ep.log(name)} ---\n{procs.tail(ep.log(name), lines)}" for name in logs)


def wait_healthy(ep: Endpoints, honcho: psutil.Process, env: dict[str, str], timeout: float, say=print) -> None:
    started, pending = time.monotonic(), probes(ep)
    reasons: dict[str, str] = {}
    while pending:
        if not procs.alive(honcho):
            exited = procs.stopped_services(ep.log("honcho"))
            others = [log for _, logs in pending.values() for log in logs if log not in exited[:1]]
            raise PlatformError(f"{exited[0] if exited else 'a service'} exited during start-up, so honcho stopped the "
                                f"others:{_tails(ep, ['honcho', *exited[:1]])}{_tails(ep, others, 8)}")
        for name, (probe, _) in list(pending.items()):
            if name == "prefect-worker" and "prefect" in pending:
                continue
            if (reason := probe()) is not None:
                reasons[name] = reason
                continue
            del pending[name]
            say(f"  {name} ready after {time.monotonic() - started:.0f} s")
            if name == "prefect":
                ensure_pool(ep, env)
        if pending and time.monotonic() - started > timeout:
            raise PlatformError(f"not ready after {timeout:.0f} s: " + "; ".join(
                f"{name}: {reasons.get(name, 'not checked')}" for name in pending)
                + _tails(ep, [log for _, logs in pending.values() for log in logs]))
        time.sleep(1.0)


def prefect_cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ensure_pool(ep: Endpoints, env: dict[str, str]) -> None:
    """Create the process work pool unless it exists (the worker may have created it first)."""
    if httpx.get(f"{ep.api_url}/work_pools/{POOL}", timeout=10).status_code == 200:
        return
    done = prefect_cli(["work-pool", "create", POOL, "--type", "process"], env)
    if done.returncode and httpx.get(f"{ep.api_url}/work_pools/{POOL}", timeout=10).status_code != 200:
        raise PlatformError(f"could not create work pool {POOL}:\n{(done.stdout + done.stderr)[-3000:]}")


def deploy(ep: Endpoints, env: dict[str, str]) -> list[str]:
    """`prefect deploy --all` from the checkout's prefect.yaml, or the file MILLRACE_PREFECT_FILE names (entry points
    relative to the checkout); idempotent: an existing deployment is updated. Returns the server's deployments."""
    chosen = ["--prefect-file", env["MILLRACE_PREFECT_FILE"]] if env.get("MILLRACE_PREFECT_FILE") else []
    done = prefect_cli(["deploy", "--all", *chosen], env)
    if done.returncode:
        raise PlatformError(f"`prefect --no-prompt deploy --all` failed (exit {done.returncode}); the services are "
                            "up: fix prefect.yaml or the flow and run `make server` again, which deploys again, or "
                            f"`make stop`:\n{(done.stdout + done.stderr)[-4000:]}")
    flows = {f["id"]: f["name"] for f in httpx.post(f"{ep.api_url}/flows/filter", json={}, timeout=10).json()}
    deployments = httpx.post(f"{ep.api_url}/deployments/filter", json={}, timeout=10).json()
    return sorted(f"{flows.get(d['flow_id'], '?')}/{d['name']}" for d in deployments)


def start(home: Path | str | None = None, *, extra_env: dict[str, str] | None = None, timeout: float | None = None,
          say: Callable[[str], None] = print) -> Endpoints:
    """Start every service (or find them running), wait until each is ready, deploy; the endpoints."""
    home = resolve_home(home)
    timeout = timeout or float(os.environ.get("MILLRACE_PLATFORM_TIMEOUT_S") or 300)
    t0 = time.monotonic()
    if found := running(home):
        ep, honcho = found
        say(f"The platform of {home} is already running (honcho pid {honcho.pid}); checking it and deploying again")
    else:
        procs.kill_marked(home)  # what a crashed platform left holding the ports
        ep = layout(home, {**os.environ, **(extra_env or {})})
        taken = [f"{PORTS[name][0]}={port} ({name})" for name, port in ep.ports.items() if procs.port_taken(port)]
        if taken:
            raise PlatformError(f"ports already in use: {', '.join(taken)}. Stop what listens there, or set those "
                                "variables to free ports")
        ep.logs.mkdir(parents=True, exist_ok=True)
        relay_token(home)
        honcho = procs.launch([sys.executable, "-m", "honcho", "-f", str(PROCFILE), "-d", str(REPO), "-e", os.devnull,
                               "start", "--no-colour"], service_env(ep, extra_env), REPO, ep.log("honcho"))
        ep.save(honcho.pid)
        say(f"Starting the platform in {home} (honcho pid {honcho.pid}, logs in {ep.logs}/)")
    env = service_env(ep, extra_env)
    try:
        wait_healthy(ep, honcho, env, timeout, say)
    except BaseException:
        if not found:  # a half-started platform is stopped; a running one is left to its operator
            stop(home)
        raise
    ep.deployments = deploy(ep, env)
    ep.startup_s = time.monotonic() - t0
    ep.save(honcho.pid)
    return ep


def stop(home: Path | str | None = None, say: Callable[[str], None] = lambda _: None) -> list[str]:
    """Stop the platform and everything it started; what had to be killed after honcho's own shutdown."""
    home = resolve_home(home)
    if found := running(home):
        _, honcho = found
        # The Prefect worker first, with SIGINT, while its server still answers: it ignores SIGTERM once the server
        # is gone. Its exit makes honcho SIGTERM the others' process groups (SIGKILL 5 s later).
        workers = [p for p in procs.marked(home) if procs.is_prefect_worker(p)]
        procs.signal_all(workers, signal.SIGINT)
        procs.wait_gone(workers, 15)
        honcho.terminate()
        procs.wait_gone([honcho], 30)
    try:
        leftovers = procs.kill_marked(home)
    except RuntimeError as exc:
        raise PlatformError(str(exc)) from None
    (home / "platform.pid").unlink(missing_ok=True)
    for line in leftovers:
        say(f"  killed leftover {line}")
    return leftovers


def status(home: Path | str | None = None) -> dict[str, str]:
    """Service -> "ok" or why not; {"platform": "not running"} when honcho is not alive."""
    home = resolve_home(home)
    if not (found := running(home)):
        return {"platform": "not running"}
    ep, _ = found
    return {name: probe() or "ok" for name, (probe, _) in probes(ep).items()}


def wait_for(url: str, timeout: float, milvus: bool = False) -> None:
    """Until `url` answers 200 (or, with `milvus`, until the Milvus server at `url` answers a call: its proxy listens
    before its coordinators are ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if milvus:
            if health.milvus(url, urlsplit(url).port or 19530) is None:
                return
        else:
            try:
                if httpx.get(url, timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    sys.exit(f"{url} did not answer within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m millrace.platform", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "wait-for"])
    parser.add_argument("url", nargs="?", help="wait-for: the URL to wait for")
    parser.add_argument("--home", help="default MILLRACE_HOME, else .millrace")
    parser.add_argument("--timeout", type=float, default=600.0, help="wait-for: seconds")
    parser.add_argument("--milvus", action="store_true", help="wait-for: the URL is a Milvus server's")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(start(args.home).describe(), flush=True)
        elif args.command == "stop":
            home = resolve_home(args.home)
            was_running = running(home) is not None
            leftovers = stop(home, say=print)
            print(f"stopped the platform of {home}" if was_running or leftovers else
                  f"no platform was running for {home} (MILLRACE_HOME, else ./.millrace); nothing to stop")
        elif args.command == "status":
            report = status(args.home)
            print("\n".join(f"{name:15} {state}" for name, state in report.items()))
            sys.exit(0 if all(v == "ok" for v in report.values()) else 1)
        else:
            wait_for(args.url, args.timeout, args.milvus)
    except PlatformError as exc:
        sys.exit(f"millrace platform: {exc}")


if __name__ == "__main__":
    main()
