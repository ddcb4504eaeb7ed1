"""Locust users of the serving API: /v1/search and /v1/chat/completions (streamed and not) with SciFact questions, plus
a step shape that ramps users until throughput stops growing or p95 passes a bound.

    locust -f bench/locustfile.py --headless --csv out/ramp -t 400s       # driven by bench/load.py, which sets:

MILLRACE_LOAD_HOSTS   comma-separated API base URLs; user i talks to host i mod n (replicas share the users)
MILLRACE_LOAD_PLAN    JSON {"users": [1, 2, 4], "step_s": 40, "settle_s": 5, "stop_on_saturation": true,
                      "growth": 1.1, "p95_ms": 10000}; a fixed load is one step
MILLRACE_LOAD_QUERIES a queries.jsonl (BEIR); MILLRACE_LOAD_MIX JSON {"search": 2, "chat": 1, "chat_stream": 1}
MILLRACE_LOAD_KEYS    comma-separated API keys (user i sends key i mod n), MILLRACE_LOAD_SCRAPE_KEY for /metrics;
                      MILLRACE_LOAD_MAX_TOKENS (default 32)
MILLRACE_LOAD_PIDS    JSON {"api": [pid, ...], "vllm": [...]}: process trees whose CPU each step records
MILLRACE_LOAD_OUT     where the per-request records and step snapshots go (JSON), read by bench/load.py

Step snapshots are taken here, in the shape's tick, because only the shape knows when a step starts and ends; the
first settle_s of every step (users still arriving) is left out of its numbers."""

from __future__ import annotations

import itertools
import json
import os
import random
import time

from locust import HttpUser, LoadTestShape, constant, events, task

from _load_stats import pct, snapshot

HOSTS = [h for h in os.environ.get("MILLRACE_LOAD_HOSTS", "http://127.0.0.1:8000").split(",") if h]
KEYS = [k for k in os.environ.get("MILLRACE_LOAD_KEYS", "").split(",") if k]
SCRAPE_KEY = os.environ.get("MILLRACE_LOAD_SCRAPE_KEY", "")  # its own key: scrapes must not eat the users' limit
PLAN = {"users": [1], "step_s": 30, "settle_s": 5, "stop_on_saturation": False, "growth": 1.1, "p95_ms": 10_000,
        **json.loads(os.environ.get("MILLRACE_LOAD_PLAN") or "{}")}
MIX = {"search": 2, "chat": 1, "chat_stream": 1, **json.loads(os.environ.get("MILLRACE_LOAD_MIX") or "{}")}
PIDS = {**json.loads(os.environ.get("MILLRACE_LOAD_PIDS") or "{}"), "locust": [os.getpid()]}
MAX_TOKENS = int(os.environ.get("MILLRACE_LOAD_MAX_TOKENS") or 32)
_qpath = os.environ.get("MILLRACE_LOAD_QUERIES")
QUERIES = [json.loads(line)["text"] for line in open(_qpath) if line.strip()] if _qpath else ["what causes malaria?"]

# (end time, name, ms, HTTP status or 0 without a response or -1 for a derived timing, failed, 429 with Retry-After)
RECORDS: list[tuple] = []
STEPS: list[dict] = []
_user_no, _asked = itertools.count(), itertools.count()


def question() -> str:
    """A SciFact query made new to the server: its 4,096-entry embedding memo must not hide the model's work."""
    return f"{random.choice(QUERIES)} (variant {next(_asked)})"


@events.request.add_listener
def _record(request_type, name, response_time, response_length, response=None, exception=None, **kw):
    status = -1 if request_type == "derived" else getattr(response, "status_code", 0) or 0
    retry_after = status == 429 and bool(response.headers.get("Retry-After"))
    RECORDS.append((time.time(), name, round(response_time, 1), status, exception is not None, retry_after))


class ApiUser(HttpUser):
    wait_time = constant(0)  # closed loop: one request in flight per user, so users = concurrency
    host = HOSTS[0]

    def __init__(self, environment):
        n = next(_user_no)
        self.host = HOSTS[n % len(HOSTS)]
        super().__init__(environment)
        if KEYS:
            self.client.headers["Authorization"] = f"Bearer {KEYS[n % len(KEYS)]}"

    def _chat_body(self, stream: bool) -> dict:
        return {"model": "millrace", "messages": [{"role": "user", "content": question()}],
                "max_tokens": MAX_TOKENS, "stream": stream}

    @task(MIX["search"])
    def search(self):
        self.client.post("/v1/search", json={"query": question(), "k": 10}, name="search")

    @task(MIX["chat"])
    def chat(self):
        self.client.post("/v1/chat/completions", json=self._chat_body(False), name="chat")

    @task(MIX["chat_stream"])
    def chat_stream(self):
        t0 = time.perf_counter()
        with self.client.post("/v1/chat/completions", json=self._chat_body(True), name="chat stream", stream=True,
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
                return
            first, done = None, False
            try:
                for line in r.iter_lines():
                    if not line.startswith(b"data: "):
                        continue
                    if line == b"data: [DONE]":
                        done = True
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        r.failure(str(event["error"])[:200])
                    elif first is None and any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                        first = time.perf_counter()
            except Exception as exc:  # a connection cut mid-stream
                r.failure(f"stream broken: {exc!r}")
                return
            # Locust times a streamed response to its headers; the whole stream is what a client waits for.
            r.request_meta["response_time"] = (time.perf_counter() - t0) * 1000
            if not done:
                r.failure("stream ended without [DONE]")
            elif first is not None:
                events.request.fire(request_type="derived", name="chat stream TTFT", response_time=(first - t0) * 1000,
                                    response_length=0, exception=None, context={})


class StepShape(LoadTestShape):
    """PLAN["users"] one step after another, each step_s long; stops early once saturated (see _saturated)."""

    def __init__(self):
        super().__init__()
        self.step, self.mark, self.best = -1, None, 0.0

    def tick(self):
        now = self.get_run_time()
        step = int(now // PLAN["step_s"])
        if step != self.step:  # a boundary: close the step just run, decide whether to go on
            if self.step >= 0 and self.mark is not None:
                STEPS.append({"users": PLAN["users"][self.step], "start": self.mark,
                              "end": snapshot(HOSTS, PIDS, SCRAPE_KEY)})
                if self._saturated(STEPS[-1]):
                    return None
            self.step, self.mark = step, None
            if step >= len(PLAN["users"]):
                return None
        if self.mark is None and now - step * PLAN["step_s"] >= PLAN["settle_s"]:
            self.mark = snapshot(HOSTS, PIDS, SCRAPE_KEY)
        users = PLAN["users"][step]
        return users, max(users, 1)  # everyone arrives within a second

    def _saturated(self, s: dict) -> bool:
        """Throughput grew less than PLAN["growth"]x over the best step so far, or p95 passed PLAN["p95_ms"]."""
        rs = [r for r in RECORDS if s["start"]["t"] <= r[0] < s["end"]["t"] and r[3] != -1]
        qps = len(rs) / max(1e-9, s["end"]["t"] - s["start"]["t"])
        p95 = pct([r[2] for r in rs], 95) or 0.0
        flat, slow = self.best and qps < PLAN["growth"] * self.best, p95 > PLAN["p95_ms"]
        s["verdict"] = {"qps": round(qps, 2), "p95_ms": p95, "flat": bool(flat), "slow": slow}
        self.best = max(self.best, qps)
        return PLAN["stop_on_saturation"] and bool(flat or slow)


_dumped = False


def _dump(**_kw):
    global _dumped
    if _dumped or not (out := os.environ.get("MILLRACE_LOAD_OUT")):
        return
    _dumped = True
    with open(out, "w") as f:
        json.dump({"records": RECORDS, "steps": STEPS, "plan": PLAN, "mix": MIX, "hosts": HOSTS}, f)


events.test_stop.add_listener(_dump)
events.quit.add_listener(_dump)
