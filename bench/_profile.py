"""py-spy on a running process for bench/load.py: a flame graph (SVG) and, from the same window, py-spy's raw collapsed
stacks turned into tables of where the time goes (by function, self and inclusive, and by package).

Two py-spy processes sample side by side with --nonblocking (they only read the target's memory; neither stops it),
since py-spy cannot convert a raw profile into an SVG afterwards and recording twice would profile two different
windows."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def record(pid: int, seconds: int, svg: Path, raw: Path, rate: int = 50) -> list[str]:
    """Both profiles of `pid` over the same `seconds`; py-spy's complaints, if any (empty when both worked)."""
    spy = str(Path(sys.executable).parent / "py-spy")
    base = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate), "--nonblocking"]
    procs = [subprocess.Popen(base + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for extra in (["-o", str(svg)], ["--format", "raw", "-o", str(raw)])]
    problems = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        if p.returncode:
            problems.append(out[-1000:])
    return problems


def package(path: str) -> str:
    """A frame's owner: py-spy names files relative to their sys.path entry, so the first folder is the package."""
    first = path.replace("\\", "/").split("/")[0].removesuffix(".py")
    return f"stdlib:{first}" if first in sys.stdlib_module_names else first


# Frames every stack passes through (thread start, executor plumbing, decorators, nn.Module dispatch): ranking them
# says nothing, so the inclusive table leaves them out.
PLUMBING = ("<", "<locals>", "_call_impl", "_wrapped_call_impl", "_bootstrap", "Thread.run", "_WorkItem.run", "_worker")


ACTIVITIES = [  # first match wins, so a Milvus call made while embedding still counts as embedding
    ("query embedding (Embedder.encode)", lambda fn, pk: fn == "Embedder.encode"),
    ("Milvus client (pymilvus, grpc)", lambda fn, pk: pk in ("pymilvus", "grpc", "milvus_lite")),
    ("ledger reads (sqlalchemy, sqlite3)", lambda fn, pk: pk in ("sqlalchemy", "stdlib:sqlite3")),
    ("LLM client (httpx to vLLM)", lambda fn, pk: pk in ("httpx", "httpcore", "openai", "anyio")),
    ("metrics (prometheus_client)", lambda fn, pk: pk == "prometheus_client"),
    ("HTTP server and framework (uvicorn, starlette, fastapi, pydantic)",
     lambda fn, pk: pk in ("uvicorn", "starlette", "fastapi", "h11", "pydantic", "pydantic_core")),
    ("serving code (serving/, millrace/)", lambda fn, pk: pk in ("serving", "millrace")),
]


def activity(frames: list[tuple[str, str]]) -> str:
    """What a stack was doing, by ACTIVITIES; an event loop waiting in select() is its own line."""
    if frames[-1][0].endswith(".select"):
        return "event loop waiting (select)"
    named = [(fn, package(fp)) for fn, fp in frames]
    for label, match in ACTIVITIES:
        if any(match(fn, pk) for fn, pk in named):
            return label
    return "other (asyncio, threads, stdlib)"


def top(raw: Path, n: int = 15) -> dict:
    """From py-spy's raw (collapsed) output: samples, and the top functions by self and by inclusive share, and the
    self share by package. Inclusive counts a function once per stack, so recursion does not inflate it."""
    self_t, incl, pkg, total = collections.Counter(), collections.Counter(), collections.Counter(), 0
    act = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c, frames = int(count), []  # frames as (function, file relative to its sys.path entry)
        for f in stack.split(";"):
            if m := FRAME.match(f):
                frames.append((m["func"], m["file"]))
            elif not f.startswith(("process ", "thread ")):  # py-spy prefixes with pid/thread pseudo-frames
                frames.append((f, "?"))
        if not frames:
            continue
        total += c
        leaf = frames[-1]
        self_t[f"{leaf[0]} ({leaf[1]})"] += c
        pkg[package(leaf[1])] += c
        act[activity(frames)] += c
        for name in {f"{fn} ({fp})" for fn, fp in frames if not package(fp).startswith("stdlib:")
                     and not any(p in fn for p in PLUMBING)}:
            incl[name] += c

    def share(counter):
        return [{"function": k, "share": round(v / total, 3)} for k, v in counter.most_common(n)]

    return {"samples": total, "self": share(self_t), "inclusive": share(incl),
            "by_package_self": [{"package": k, "share": round(v / total, 3)} for k, v in pkg.most_common(n)],
            "by_activity": [{"activity": k, "share": round(v / total, 3)} for k, v in act.most_common()]}
