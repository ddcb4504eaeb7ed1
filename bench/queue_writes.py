"""The change queue's and the relay's writes to the ledger database, this checkout against another, side by side.

    git worktree add /tmp/base <rev>
    python bench/queue_writes.py --base /tmp/base        # 3 rounds each, alternating, ~1 min

Each round runs in a fresh process of the checkout measured, on a fresh SQLite ledger (the other checkout uses this
checkout's Python environment: only the code differs):
- bulk: one `ChangeQueue.put` of 5,000 new changes (a folder copied into a watched folder, a flood drained from SQS),
  then the same 5,000 again (all redeliveries: each is read and dropped);
- relay: 300 groups of 4 deliveries written as the relay writes a group (intake.relay_writes.DeliveryWriter.write:
  seen-before check, queue put, delivery ids, last events), while another process reads the queue as the drain and
  the API's watermark do. Wall time per group, and this process's CPU per group."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import ROOT, table, write

GROUPS, PER_GROUP, BULK = 300, 4, 5000


def _reader(url: str, stop, checkout: str) -> None:
    sys.path.insert(0, checkout)  # importing this module put ROOT first (bench/_util.py)
    from millrace.events.queue import ChangeQueue

    queue = ChangeQueue(url)
    while not stop.is_set():
        queue.stats("c")
        queue.take("c", 1000)


def measure(checkout: str) -> dict:
    """One round in this process, of the code in `checkout`."""
    sys.path.insert(0, checkout)  # importing this module put ROOT first (bench/_util.py)
    from datetime import datetime, timezone

    from intake.relay_writes import DeliveryWriter
    from millrace.events.log import EventLog
    from millrace.events.queue import Change, ChangeQueue
    from millrace.events.s3 import S3Change

    def change(i: int, folder: str) -> Change:
        return Change(collection="c", source="s3://bucket/docs", object=f"{folder} #{i}/café {i}.txt",
                      sequencer=f"{i:016X}", size=100, origin=f"relay:{i}")

    def s3(i: int) -> S3Change:
        return S3Change(bucket="bucket", key=f"docs/relay #{i}/café {i}.txt", kind="created", sequencer=f"{i:016X}",
                        message_id=f"m{i}", event_time=datetime.now(timezone.utc))

    url = f"sqlite:///{tempfile.mkdtemp(prefix='queue-writes ')}/ledger.sqlite"
    queue, log = ChangeQueue(url), EventLog(url)
    t = time.perf_counter()
    queue.put([change(i, "bulk") for i in range(BULK)])
    bulk_new = time.perf_counter() - t
    t = time.perf_counter()
    queue.put([change(i, "bulk") for i in range(BULK)])
    bulk_again = time.perf_counter() - t
    writer = DeliveryWriter(queue, log, lambda changes: None)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    reader = ctx.Process(target=_reader, args=(url, stop, checkout))
    reader.start()
    time.sleep(3)  # the reader's imports
    walls, cpu = [], time.process_time()
    for g in range(GROUPS):
        ids = range(100_000 + g * PER_GROUP, 100_000 + (g + 1) * PER_GROUP)
        group = [(f"m{i}", [(s3(i), change(i, "relay"))]) for i in ids]
        t = time.perf_counter()
        outcomes = writer.write(group)
        walls.append(1000 * (time.perf_counter() - t))
        assert all(code == 200 for code, _ in outcomes), outcomes
    cpu = 1000 * (time.process_time() - cpu) / GROUPS
    stop.set()
    reader.join(30)
    assert queue.stats("c").pending == BULK + GROUPS * PER_GROUP
    walls.sort()
    return {"bulk_new_s": round(bulk_new, 3), "bulk_again_s": round(bulk_again, 3),
            "group_p50_ms": round(statistics.median(walls), 2), "group_p95_ms": round(walls[int(0.95 * len(walls))], 2),
            "group_cpu_ms": round(cpu, 2), "code": str(Path(sys.modules["millrace"].__file__).parent.parent)}


def run_in(checkout: Path) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import json, queue_writes; "
            f"print(json.dumps(queue_writes.measure({str(checkout)!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""}, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"this": [], "base": []}
    for _ in range(args.rounds):
        for name, checkout in (("base", args.base.resolve()), ("this", ROOT)):
            runs[name].append(run_in(checkout))
            print(name, runs[name][-1], flush=True)
    keys = [k for k in runs["this"][0] if k != "code"]
    rows = [{"checkout": name, **{k: statistics.median(r[k] for r in rs) for k in keys}} for name, rs in runs.items()]
    print(table(rows, ["checkout", *keys]))
    write("queue_writes", {"base": str(args.base), "rounds": runs, "medians": rows})


if __name__ == "__main__":
    main()
