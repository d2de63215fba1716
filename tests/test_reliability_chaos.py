"""Reliability suite, part 3 (issue 17): chaos on step 06's SOLUTION under load. The figures the step 06 issue
(15) states hold, and every accepted request is answered.

The fleet is the one the step 06 grader builds (grader.test_step06_optimization.build_fleet): a real
redis-server, two uvicorn replicas of solutions/06-optimization sharing it, and real nginx in front with the
solution's own fragment and HTTPS from a test CA. The settings are the grader's non-default ones (base_env:
3 attempts, a 2.2 s deadline, the fallback model gemini-2.0-flash-lite, ...) plus RATE_LIMIT=40/minute and the
response cache off (CACHE_TTL_SECONDS=0: every request goes upstream, so the injected faults are met). The
session simulator (tests/conftest.py) injects the faults; the load is N threads (chaos_support.run_load), each
a user with its own key and HTTPS pool, sending POST /chat back to back with its own X-Request-ID.

Scenarios (each test's docstring states its bounds; each prints what it measured, visible with `-s`):
1. 429/503 on the primary model at 5 %, 20 % and 50 %, realistic latency, fallback model healthy;
2. upstream hangs (primary only, then both models);
3. a Redis outage mid-load (SIGSTOP, then stopped, then restarted), then the limit holds again;
4. one replica SIGKILLed mid-load.

Missing redis-server or nginx: the kit's require_* helpers skip with a Korean note (fail under
COURSE_REQUIRE_TOOLS=1). Everything is started on free loopback ports and stopped by PID (context managers).
The whole module takes about a minute (printed at the end; bound 150 s on a quiet machine).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter

import chaos_support as cs
import httpx
import pytest

from grader import optimization_support as osup
from grader import test_step06_optimization as g06

PRIMARY, FALLBACK = g06.PRIMARY, g06.FALLBACK
DEADLINE = g06.DEADLINE                # REQUEST_DEADLINE_SECONDS=2.2 (default 2.5)
ATTEMPT_BOUND = g06.ATTEMPT_BOUND      # LLM_MAX_ATTEMPTS=3 on the primary + 3 on the fallback model
MARGIN = 1.0                           # over the deadline: nginx + TLS + scheduling of 2 replicas on 2 shared cores
WITHIN = DEADLINE + MARGIN
LIMIT = 40                             # RATE_LIMIT=40/minute (default 60), per key
REOPEN_SLACK = g06.REOPEN_SLACK        # requests that may pass on a stale pool connection right after Redis is back
RECOVERY_SECONDS = g06.RECOVERY_SECONDS
USERS = 40
LOAD_SECONDS = 4.0
# 5 % and 20 %: the 99.5 % figure is a rate, checked as one over the whole load. 4 s gives about 180 requests, where
# 99.5 % means not one failure; the solution's true failure rate there is about 0.05 % (a tail latency on the
# primary, then one on the fallback, inside 2.2 s), so 1 in 10 runs failed on a single 504. 10 s gives about 450
# requests (2 failures allowed), as the step 06 grader's own 10 s Locust run does.
RATE_LOAD_SECONDS = 10.0
SUCCESS_FIGURE = 0.995
CLIENT_TIMEOUT = DEADLINE + 8          # a request not answered by then is a hang (status 0)
WALL_BOUND_S = 150
UPSTREAM_ERRORS = (502, 503, 504)      # the documented upstream_* errors of /chat


@pytest.fixture(scope="module")
def fleet(simulator, tmp_path_factory):
    started = time.monotonic()
    keys = cs.client_keys(400)
    simulator.reset(config=True)
    with cs.chaos_fleet(simulator, tmp_path_factory.mktemp("chaos-fleet"), keys,
                        RATE_LIMIT=f"{LIMIT}/minute", CACHE_TTL_SECONDS="0") as f:
        f.notes["keys"] = iter(keys)
        f.notes["tls"] = f.ca.ssl_context()   # httpx 0.28 deprecates a CA path in verify=
        yield f
    simulator.reset(config=True)
    print(f"\n[chaos] module wall time {time.monotonic() - started:.1f} s from the fleet's start (bound {WALL_BOUND_S} s)")


@pytest.fixture
def faults(simulator):
    """The simulator with fresh counters; back to its start-up configuration afterwards. Each reset waits until no
    call is in flight: an upstream call the service cancelled still sleeps its simulated latency in the simulator,
    and one scenario's leftovers should not load the next one (the gauges themselves restart at each reset)."""
    settle_in_flight(simulator)
    simulator.reset(config=True)
    yield simulator
    settle_in_flight(simulator)
    simulator.reset(config=True)


def fresh(fleet, n: int) -> list[str]:
    """n client keys no earlier load used (the per-key limit never throttles a load)."""
    return [next(fleet.notes["keys"]) for _ in range(n)]


def load(fleet, tag: str, users: int = USERS, seconds: float = LOAD_SECONDS, during=None) -> cs.Load:
    return cs.run_load(fleet.url, fresh(fleet, users), seconds, verify=fleet.notes["tls"], timeout=CLIENT_TIMEOUT,
                       tag=tag, during=during)


def problems_of(res: cs.Load, errors: tuple[int, ...] = UPSTREAM_ERRORS) -> list[str]:
    return [p for s in res.shots if (p := cs.answer_problem(s, fallback_model=FALLBACK, primary_model=PRIMARY,
                                                             error_statuses=errors, within=WITHIN))]


def by_model(res: cs.Load) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in res.ok:
        out[str(s.body.get("model"))] = out.get(str(s.body.get("model")), 0) + 1
    return out


def attempt_counts(simulator, res: cs.Load) -> list[int]:
    by_id = dict(simulator.stats().get("by_request_id") or {})
    return [int(by_id.get(s.reply.rid, 0)) for s in res.shots if s.status != 0]


def settle_in_flight(simulator, within: float = 5.0) -> float | None:
    """Seconds until the simulator has no request in flight (hung upstream calls released), None if never."""
    began = time.monotonic()
    while time.monotonic() - began < within:
        if simulator.stats().get("in_flight", 0) == 0:
            return time.monotonic() - began
        time.sleep(0.05)
    return None


def server_latency_max(fleet, res: cs.Load) -> float | None:
    """The slowest of `res`'s requests as the replicas logged it (latency_ms of step 05's request line)."""
    rids = {s.reply.rid for s in res.shots}
    values = [float(d["latency_ms"]) for i in range(len(fleet.replicas))
              for d in osup.request_lines(fleet.replicas.logs(i))
              if d.get("request_id") in rids and isinstance(d.get("latency_ms"), (int, float))]
    return max(values, default=None)


def first(items: list[str], n: int = 3) -> str:
    return "; ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


# =========================================================================== 1. 429/503 at 5, 20, 50 %
@pytest.mark.parametrize("rate", [0.05, 0.20, 0.50], ids=["5pct", "20pct", "50pct"])
def test_upstream_faults_under_load(fleet, faults, rate):
    """429 and 503 (half each) on the primary model at `rate`, realistic latency, the fallback model healthy;
    40 users for 10 s (5 %, 20 %) or 4 s (50 %) through nginx (HTTPS) to two replicas on one Redis.

    Bounds, every rate: every request gets an HTTP answer (no connection error, no hang) within the deadline
    2.2 s + 1.0 s, each a 200 (model = primary with fallback=false, or the fallback model with fallback=true) or
    a documented 502/503/504 error JSON (never a 500); upstream attempts per request (simulator, by
    X-Request-ID) never above 6 (3 primary + 3 fallback) and at least 1 (the count is not vacuous).
    At 5 % and 20 % (step 06's figures): success >= 99.5 % over the whole load (about 450 requests, so
    floor(0.5 % of n) failures are allowed; the count is printed) and p95 < 3 s."""
    faults.configure(latency="realistic", error_429_rate=rate / 2, error_503_rate=rate / 2, fault_models=[PRIMARY])
    res = load(fleet, f"faults{int(rate * 100)}", seconds=RATE_LOAD_SECONDS if rate <= 0.20 else LOAD_SECONDS)
    failed = len(res) - len(res.ok)
    counts = attempt_counts(faults, res)
    injected = faults.stats().get("faults") or {}
    print(f"\n[chaos] faults {rate:.0%}: {res.summary()}; answered by {by_model(res)}; attempts/request max "
          f"{max(counts, default=0)} (bound {ATTEMPT_BOUND}), mean {sum(counts) / max(1, len(counts)):.2f}; "
          f"not 200: {failed} of {len(res)} (99.5 % allows {int(len(res) * (1 - SUCCESS_FIGURE) + 1e-9)}); "
          f"injected 429 {injected.get('error_429', 0)}, 503 {injected.get('error_503', 0)}")
    assert len(res) >= USERS, f"the load sent too few requests: {res.summary()}"
    assert injected.get("error_429", 0) and injected.get("error_503", 0), f"no fault was injected: {injected}"
    problems = problems_of(res)
    assert not problems, f"{len(problems)} of {len(res)} requests not answered as documented: {first(problems)}"
    assert max(counts, default=0) <= ATTEMPT_BOUND, (
        f"upstream attempts per request above {ATTEMPT_BOUND}: max {max(counts)}, "
        f"{sum(1 for c in counts if c > ATTEMPT_BOUND)} requests over the bound")
    assert min(counts, default=0) >= 1, (
        f"{sum(1 for c in counts if c == 0)} answered requests never reached the simulator with their X-Request-ID")
    if rate <= 0.20:
        assert res.success_rate >= SUCCESS_FIGURE, (
            f"success below 99.5 % at {rate:.0%} faults: {failed} of {len(res)} not 200: {res.summary()}")
        assert res.p95() < 3.0, f"p95 not below 3 s at {rate:.0%} faults: {res.summary()}"


# =========================================================================== 2. upstream hangs
def test_upstream_hangs(fleet, faults):
    """The primary model hangs (30 s) on half of its calls, realistic latency, the fallback healthy: 40 users for
    4 s. Then both models hang on every call: 10 users for 2.5 s.

    Bounds: every request gets an HTTP answer within the deadline 2.2 s + 1.0 s (no request hangs), each a 200
    (fallback marked) or a documented 503/504 JSON; with the primary half hung and the fallback healthy at least
    90 % are 200 (the fallback is given the time it needs); with both hung none is 200. After each load the
    simulator has no call in flight within 5 s (hung upstream calls are cancelled, not leaked)."""
    faults.configure(latency="realistic", hang_rate=0.5, hang_seconds=30, fault_models=[PRIMARY])
    half = load(fleet, "hang-primary")
    released_half = settle_in_flight(faults)
    hangs = (faults.stats().get("faults") or {}).get("hang", 0)
    faults.configure(latency="realistic", hang_rate=1.0, hang_seconds=30, fault_models=None)
    both = load(fleet, "hang-both", users=10, seconds=2.5)
    released_both = settle_in_flight(faults)
    print(f"\n[chaos] primary hangs 50 %: {half.summary()}; answered by {by_model(half)}; hangs injected {hangs}; "
          f"upstream released after {released_half}")
    print(f"[chaos] both models hang: {both.summary()}; upstream released after {released_both}; "
          f"replicas' own latency_ms max {server_latency_max(fleet, both)}")
    assert hangs > 0 and len(half) >= USERS and len(both) >= 10, "the hang fault was not met by the load"
    for name, res in (("primary hangs", half), ("both hang", both)):
        problems = problems_of(res, errors=(503, 504))
        assert not problems, f"{name}: {len(problems)} of {len(res)} requests not answered in time: {first(problems)}"
    assert half.success_rate >= 0.90, f"primary half hung, fallback healthy: {half.summary()}"
    assert not both.ok, f"both models hang but {len(both.ok)} answers were 200: {both.summary()}"
    assert released_half is not None and released_both is not None, (
        f"hung upstream calls still open 5 s after the load: {faults.stats().get('in_flight')}")


# =========================================================================== 3. Redis outage mid-load
def metric_total(fleet, name: str) -> float:
    total = 0.0
    with httpx.Client() as client:
        for url in fleet.replicas.urls:
            total += osup.metric_sum(client.get(f"{url}/metrics", timeout=5).text, name)
    return total


def test_redis_outage_under_load(fleet, faults):
    """Redis frozen (SIGSTOP) for 1.5 s, then stopped for 1.5 s, then restarted, while 30 users send for 5.5 s
    (realistic latency, no upstream fault). The solution documents FAIL OPEN (README '한도 저장소가 죽으면').

    Bounds: every request is a 200 within the deadline 2.2 s + 1.0 s (no 5xx, no 429, no connection error), at
    least 20 of them sent during the outage, and llm_ratelimit_errors_total rose (the outage was met). After
    the load (Redis back since its last 1.5 s), within 6 s, a burst of LIMIT + 12 from a fresh key gets 40..43
    answers 200 (3 may pass on a stale pool connection) and the rest 429 rate_limited with Retry-After: the
    limit holds again."""
    errors_before = metric_total(fleet, "llm_ratelimit_errors_total")
    faults.configure(latency="realistic")

    def outage(marks):
        time.sleep(1.0)
        marks["frozen"] = time.monotonic()
        fleet.redis.freeze()
        try:
            time.sleep(1.5)
        finally:
            fleet.redis.thaw()
        fleet.redis.stop()
        marks["stopped"] = time.monotonic()
        try:
            time.sleep(1.5)
        finally:
            fleet.redis.start()
        marks["back"] = time.monotonic()

    res = load(fleet, "redis", users=30, seconds=5.5, during=outage)
    during = [s for s in res.shots if s.started < res.marks["back"] and s.ended > res.marks["frozen"]]
    errors = metric_total(fleet, "llm_ratelimit_errors_total") - errors_before
    faults.configure(latency="zero")
    recovered, last, probing = None, None, time.monotonic()   # Redis has been back since the last 1.5 s of the load
    while recovered is None and time.monotonic() - probing < RECOVERY_SECONDS + 10:
        last = osup.burst(fleet.url, fresh(fleet, 1)[0], LIMIT + 12, 10, timeout=CLIENT_TIMEOUT,
                           verify=fleet.notes["tls"])
        if any(r.status == 429 for r in last):
            recovered = time.monotonic() - probing
    print(f"\n[chaos] Redis outage: {res.summary()}; {len(during)} requests overlapped the outage "
          f"(p95 of those {cs.Load(during, 0, 0).p95():.2f} s); llm_ratelimit_errors_total +{errors:g}; "
          f"limit held {recovered if recovered is None else round(recovered, 2)} s after the load: "
          f"{osup.count_by(last or [])}")
    bad = [p for s in res.shots if (p := cs.answer_problem(s, fallback_model=FALLBACK, primary_model=PRIMARY,
                                                           error_statuses=(), within=WITHIN))]
    assert not bad, f"{len(bad)} of {len(res)} requests were not a timely 200 during the Redis outage: {first(bad)}"
    assert len(during) >= 20, f"only {len(during)} requests overlapped the outage"
    assert errors > 0, "llm_ratelimit_errors_total did not rise: the service never met the outage"
    assert recovered is not None and recovered <= RECOVERY_SECONDS, (
        f"the limit did not hold again within {RECOVERY_SECONDS:.0f} s after the load (Redis restarted 1.5 s "
        f"before its end): "
        f"{osup.count_by(last or [])}")
    ok = sum(1 for r in last if r.status == 200)
    limited = [r for r in last if r.status == 429]
    assert LIMIT <= ok <= LIMIT + REOPEN_SLACK and len(limited) + ok == len(last), (
        f"burst of {len(last)} after Redis restarted: {osup.count_by(last)} (expected {LIMIT}..{LIMIT + REOPEN_SLACK} "
        f"200 and the rest 429)")
    assert all(r.code == "rate_limited" and osup.retry_after_ok(r.headers.get("retry-after")) for r in limited), (
        f"429 without rate_limited / Retry-After: {limited[0].short()} {limited[0].headers.get('retry-after')!r}")


# =========================================================================== 4. a replica SIGKILLed mid-load
ACCESS = re.compile(r'"POST /chat[^"]*" (\d{3}) upstream=(\S+)')


def test_replica_killed_under_load(fleet, faults):
    """30 users for 5 s (realistic latency, no upstream fault); after 2 s one replica gets SIGKILL (by PID: no
    graceful shutdown, its in-flight requests are lost).

    Bounds: every request gets an HTTP answer (no dropped connection or hang at the client); the failed ones
    (non-200) are at most the requests in flight at the kill, each of them was in flight at the kill, and nginx
    logged every 5xx as coming from the killed replica; every request sent after the killed process was gone
    (at least 20) is a 200 within the deadline 2.2 s + 1.0 s, answered by the surviving replica. The killed
    replica is started again afterwards."""
    faults.configure(latency="realistic")
    victim = fleet.replicas[0]
    survivor = fleet.replicas[1]
    log_before = len(fleet.balancer.access_log())

    def kill(marks):
        time.sleep(2.0)
        marks["kill"] = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.wait(timeout=10)
        marks["dead"] = time.monotonic()

    restart = 0.0
    try:
        res = load(fleet, "kill", users=30, seconds=5.0, during=kill)
    finally:
        if not victim.alive:
            restart = fleet.replicas.start_replica(0)
    kill_at, dead_at = res.marks["kill"], res.marks["dead"]
    in_flight = [s for s in res.shots if s.started <= dead_at and s.ended >= kill_at]
    failed = [s for s in res.shots if s.status != 200]
    after = [s for s in res.shots if s.started > dead_at]
    lines = fleet.balancer.access_log()[log_before:]
    fivexx = Counter(f"{m.group(1)} from {m.group(2)}" for ln in lines
                     if (m := ACCESS.search(ln)) and int(m.group(1)) >= 500)
    served_after = sum(1 for ln in lines if (m := ACCESS.search(ln)) and m.group(1) == "200"
                       and m.group(2).split(",")[-1].strip() == survivor.address)
    print(f"\n[chaos] replica killed: {res.summary()}; in flight at the kill {len(in_flight)}, failed {len(failed)} "
          f"{osup.count_by([s.reply for s in failed])}; nginx 5xx {dict(fivexx)}; after the kill {len(after)} requests, "
          f"{sum(1 for s in after if s.status == 200)} 200; surviving replica answered {served_after}; "
          f"restarted in {restart:.1f} s")
    lost = res.unanswered()
    assert not lost, f"{len(lost)} requests got no HTTP answer: {lost[0].reply.short()}"
    assert len(failed) <= len(in_flight), f"{len(failed)} failures > {len(in_flight)} requests in flight at the kill"
    outside = [s for s in failed if not (s.started <= dead_at and s.ended >= kill_at)]
    assert not outside, f"{len(outside)} failures were not in flight at the kill: {outside[0].reply.short()}"
    assert all(what.split(",")[-1].strip().endswith(victim.address) for what in fivexx), (
        f"nginx 5xx not from the killed replica {victim.address}: {dict(fivexx)}")
    assert len(after) >= 20, f"only {len(after)} requests after the kill"
    late = [p for s in after if (p := cs.answer_problem(s, fallback_model=FALLBACK, primary_model=PRIMARY,
                                                        error_statuses=(), within=WITHIN))]
    assert not late, f"{len(late)} of {len(after)} requests after the kill failed: {first(late)}"
    assert served_after >= len(after), f"the surviving replica answered {served_after} < {len(after)}"
