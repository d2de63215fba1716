"""Helpers of the chaos part of the reliability suite (tests/test_reliability_chaos.py, issue 17).

- `chaos_fleet`: step 06's SOLUTION as the step 06 grader runs it (grader.test_step06_optimization.build_fleet:
  a real redis-server, two uvicorn replicas, the solution's own nginx fragment with HTTPS from a test CA), with
  this suite's settings on top of the grader's non-default ones (base_env).
- `run_load`: a closed-loop load of N users (one thread and one HTTPS connection pool each, every user with its
  own API key, every request with its own X-Request-ID) for a fixed time, while the caller injects a fault;
  each request is recorded with its start and end (time.monotonic) so the assertions can relate it to the fault.
- `Load`: success rate, p95, statuses, and the problems the scenarios assert on.

For maintainers showing that each assertion can fail (a broken service must fail the suite):
    CHAOS_SOLUTION=/tmp/broken-06      grade this folder instead of solutions/06-optimization (a broken copy)
    CHAOS_SERVICE_ENV='{"LLM_MAX_ATTEMPTS": "1", "FALLBACK_MODEL": ""}'   settings added last (JSON object)
Neither is set in `make test`.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from coursekit.lesson_monitoring import exact_quantile
from grader import optimization_support as osup
from grader import test_step06_optimization as g06

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "06-optimization"


def solution_dir() -> Path:
    return Path(os.environ.get("CHAOS_SOLUTION") or SOLUTION).resolve()


def env_overrides() -> dict[str, str]:
    raw = os.environ.get("CHAOS_SERVICE_ENV")
    return {k: str(v) for k, v in json.loads(raw).items()} if raw else {}


def client_keys(n: int) -> list[str]:
    """n fresh client keys (each load user gets its own: the per-key limit never throttles the load)."""
    return [f"chaos-{i}-{secrets.token_hex(8)}" for i in range(n)]


@contextmanager
def chaos_fleet(simulator, root: Path, keys: list[str], **settings: str) -> Iterator[Any]:
    """grader's build_fleet (Redis + 2 replicas + nginx/TLS) on the solution; `keys` are accepted as clients
    (SERVICE_API_KEYS), `settings` go on top of the grader's base_env, CHAOS_SERVICE_ENV last."""
    extra = {"SERVICE_API_KEYS": ",".join(g06.OTHER_KEYS + keys), **settings, **env_overrides()}
    gen = g06.build_fleet(solution_dir(), root, simulator, with_redis=True, **extra)
    fleet = next(gen)
    try:
        if fleet.error:
            raise AssertionError(f"the balancer did not start: {fleet.error}\n{fleet.error_detail or ''}")
        yield fleet
    finally:
        gen.close()


# --------------------------------------------------------------------------- the load
@dataclass
class Shot:
    """One request of the load."""

    reply: osup.Reply
    started: float       # time.monotonic() when it was sent
    ended: float
    user: int

    @property
    def status(self) -> int:
        return self.reply.status

    @property
    def body(self) -> dict:
        return self.reply.body if isinstance(self.reply.body, dict) else {}


@dataclass
class Load:
    shots: list[Shot]
    began: float
    seconds: float                    # until the last answer came back
    marks: dict[str, float] = field(default_factory=dict)   # what the fault injector did, when (monotonic)

    def __len__(self) -> int:
        return len(self.shots)

    @property
    def ok(self) -> list[Shot]:
        return [s for s in self.shots if s.status == 200]

    @property
    def success_rate(self) -> float:
        return len(self.ok) / len(self.shots) if self.shots else 0.0

    def latencies(self) -> list[float]:
        return sorted(s.reply.seconds for s in self.shots)

    def p95(self) -> float:
        values = self.latencies()
        return exact_quantile(0.95, values) if values else math.nan   # nearest rank

    def slowest(self) -> float:
        return max(self.latencies(), default=math.nan)

    def statuses(self) -> dict[str, int]:
        return osup.count_by([s.reply for s in self.shots])

    def unanswered(self) -> list[Shot]:
        """No HTTP answer at all: a refused or dropped connection, or the client's timeout (a hang)."""
        return [s for s in self.shots if s.status == 0]

    def summary(self) -> str:
        return (f"{len(self.shots)} requests in {self.seconds:.1f} s, success {self.success_rate:.2%}, "
                f"p95 {self.p95():.2f} s, max {self.slowest():.2f} s, {self.statuses()}")


SPAWN_RATE = 50.0   # users started per second, as the step 06 grader's Locust runs (spawn_rate=50)


def run_load(url: str, keys: list[str], seconds: float, *, verify: Any, timeout: float, tag: str,
             during: Callable[[dict[str, float]], None] | None = None) -> Load:
    """len(keys) users, each sending POST /chat back to back (its own key, an HTTPS pool of its own, a new
    question and X-Request-ID every time) until `seconds` have passed; then every request in flight is
    waited for (each is bounded by `timeout`, so a hang shows as status 0, not as a stuck suite).
    Users start SPAWN_RATE per second, evenly (not all in the same millisecond: a herd that starts together
    also times out together, and the replica then handles those timeouts one after the other on its event loop;
    that herd is not what a load of independent users looks like).
    `during(marks)` runs in the calling thread while the users run (the fault injector) and may record
    moments in `marks` (time.monotonic())."""
    shots: list[Shot] = []
    lock = threading.Lock()
    began = time.monotonic()
    stop_at = began + seconds

    def user(i: int) -> None:
        out = []
        time.sleep(max(0.0, began + i / SPAWN_RATE - time.monotonic()))
        with httpx.Client(verify=verify) as client:
            n = 0
            while time.monotonic() < stop_at:
                rid = f"chaos-{tag}-{i}-{n}-{secrets.token_hex(4)}"
                t0 = time.monotonic()
                r = osup.chat(client, url, keys[i], f"요금제 알려 주세요 ({tag} {i}-{n})", timeout=timeout, rid=rid)
                out.append(Shot(r, t0, time.monotonic(), i))
                n += 1
        with lock:
            shots.extend(out)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(len(keys))]
    for t in threads:
        t.start()
    marks: dict[str, float] = {}
    try:
        if during is not None:
            during(marks)
    finally:
        for t in threads:
            t.join(timeout=seconds + timeout + 30)
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        raise AssertionError(f"{stuck} load users still running {seconds + timeout + 30:.0f} s after the start")
    shots.sort(key=lambda s: s.started)
    return Load(shots, began, time.monotonic() - began, marks)


# --------------------------------------------------------------------------- what the scenarios assert
def answer_problem(s: Shot, *, fallback_model: str, primary_model: str, error_statuses: tuple[int, ...],
                   within: float) -> str | None:
    """None when `s` is an accepted answer: a 200 from the primary model (fallback false) or from the fallback
    model (fallback true), or a documented error JSON with one of `error_statuses`; and within `within` s."""
    r = s.reply
    if r.status == 0:
        return f"no HTTP answer: {r.error} after {r.seconds:.2f} s"
    if r.seconds > within:
        return f"HTTP {r.status} after {r.seconds:.2f} s (> {within:.1f} s)"
    if r.status == 200:
        body = s.body
        if body.get("model") == fallback_model and body.get("fallback") is True:
            return None
        if body.get("model") == primary_model and body.get("fallback") is False:
            return None
        return f"200 with model={body.get('model')!r} fallback={body.get('fallback')!r} (unmarked or unknown model)"
    if r.status not in error_statuses or not osup.documented_error(r.body):
        return f"{r.short()} (expected 200 or a documented error JSON with status in {error_statuses})"
    return None

