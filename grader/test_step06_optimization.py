"""Step 06 채점 (1부): 데드라인 있는 재시도, 재시도하지 않을 오류, Fallback, API 키별 Rate Limiting (Redis 공유),
Redis 장애, 부하 차단, 우아한 종료와 롤링 재시작, TLS, 로드 밸런서. (2부): 응답 캐시와 요청 합치기 (진짜 Redis 를
함께 쓰는 서비스 네 개: 같은 설정 둘, 모델만 다른 것, 프롬프트 버전만 다른 것), 스트리밍 (SSE 를 오는 대로 읽고
시뮬레이터의 streams 집계로 클라이언트가 떠난 뒤 업스트림이 닫혔는지 봄).

학습자의 서비스를 실제 uvicorn 프로세스로 띄웁니다 (기본값이 아닌 설정: 시도 3번, 데드라인 2.2초, 기본이 아닌
Fallback 모델, 분당 12번 한도, 작은 동시 처리 한도). 뒤에는 채점기의 Gemini 시뮬레이터가 장애(429/503, 멈춤, 400,
SAFETY 차단, 깨진 본문, 빈 후보, 처리 용량)를 주입합니다. 복제본 두 개는 학습자의 nginx 조각
(balancer/nginx.conf.template)을 쓴 진짜 nginx 뒤에 두고, 한도는 진짜 redis-server 에 둡니다. 부하는 Locust 를
하위 프로세스로 돌립니다. 숫자는 모두 채점기가 직접 세거나 시뮬레이터의 집계와 비교합니다.

긴 부하 전에는 언제나 싼 확인 요청을 먼저 보냅니다: 손대지 않은 스타터는 몇 초 안에 실패합니다.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from grader import harness
from grader import optimization_support as osup
from grader.harness import (
    blocked,
    check,
    copy_step,
    fail,
    record,
    run_locust,
    run_service,
)

STEP = "step06"
BUDGET_SECONDS = 120

PRIMARY = "gemini-3.5-flash"
FALLBACK = "gemini-2.0-flash-lite"       # 기본값(gemini-3.5-flash-lite)이 아닌 Fallback 모델: 박아 둔 이름이 드러남
MAX_ATTEMPTS = 3                         # LLM_MAX_ATTEMPTS (기본 2)
DEADLINE = 2.2                           # REQUEST_DEADLINE_SECONDS (기본 2.5)
SLACK = 0.5                              # 데드라인 위로 허용하는 여유 (프로세스, 네트워크)
ATTEMPT_BOUND = 2 * MAX_ATTEMPTS         # 주 모델 LLM_MAX_ATTEMPTS + Fallback 모델 LLM_MAX_ATTEMPTS
LIMIT = 12                               # RATE_LIMIT="12/minute"
BURST = 10 * LIMIT
RECOVERY_SECONDS = 6.0                   # Redis 재시작 뒤 한도가 다시 동작해야 하는 시간
REOPEN_SLACK = 3                         # Redis 재시작 직후 끊긴 풀 연결로 fail open 될 수 있는 요청 수
MAX_IN_FLIGHT = 3                        # 부하 차단 검사의 MAX_IN_FLIGHT (기본 32)
UPSTREAM_CAPACITY = 3                    # 시뮬레이터 max_concurrency (모델마다)
HIGH_LIMIT = "100000/minute"             # 한도를 보지 않는 검사의 RATE_LIMIT

SERVICE_KEY = "svc-a-" + secrets.token_hex(12)
OTHER_KEYS = ["svc-" + n + "-" + secrets.token_hex(10) for n in ("b", "c", "d", "e", "f")]
KEY_B, KEY_C, KEY_D, KEY_E, KEY_F = OTHER_KEYS
GOOGLE_KEY = "grader-gemini-" + secrets.token_hex(8)
QUESTION = "하늘클라우드 요금제는 어떻게 되나요?"


@pytest.fixture(scope="module", autouse=True)
def grading_time(request):
    """Print how long grading step 06 took (issue: part 1 under 2 minutes)."""
    with harness.report_grading_time(request, "step06", BUDGET_SECONDS):
        yield


def base_env(simulator, tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        "SERVICE_API_KEY": SERVICE_KEY,
        "SERVICE_API_KEYS": ",".join(OTHER_KEYS),
        "GOOGLE_API_KEY": GOOGLE_KEY,
        "GOOGLE_GEMINI_BASE_URL": simulator.base_url,
        "LLM_MODEL": PRIMARY,
        "LLM_TIMEOUT_SECONDS": "10",
        "LLM_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "REQUEST_DEADLINE_SECONDS": str(DEADLINE),
        "FALLBACK_MODEL": FALLBACK,
        "CIRCUIT_FAIL_MAX": "100",
        "CIRCUIT_RESET_SECONDS": "30",
        "RATE_LIMIT": HIGH_LIMIT,
        "MAX_IN_FLIGHT": "200",
        "JUDGE_SAMPLE_RATE": "0",
        "LOG_DIR": str(tmp / "service-logs"),
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


# Fault settings back to "no fault" (the simulator of the grading session starts without faults).
CLEAN = {"valid_keys": None, "safety_block_rate": 0.0, "malformed_rate": 0.0, "empty_candidates_rate": 0.0,
         "hang_rate": 0.0, "error_503_rate": 0.0, "error_429_rate": 0.0, "fault_models": None}


def rid(tag: str) -> str:
    return f"grader-{tag}-{secrets.token_hex(6)}"


def attempts_of(sim, request_id: str) -> int:
    return int((sim.stats().get("by_request_id") or {}).get(request_id, 0))


def model_calls(sim) -> dict[str, int]:
    return dict(sim.stats().get("by_model") or {})


@dataclass
class Single:
    """One replica of the learner's service for the checks that need no balancer."""

    svc: Any
    client: httpx.Client

    def chat(self, tag: str, timeout: float = DEADLINE + 1.5, key: str | None = SERVICE_KEY) -> osup.Reply:
        return osup.chat(self.client, self.svc.base_url, key, QUESTION, timeout=timeout, rid=rid(tag))


def single(step_dir, tmp_path_factory, simulator, label: str, **extra: str):
    root = tmp_path_factory.mktemp(f"step06-{label}")
    graded = copy_step(step_dir, root)
    simulator.reset(config=True)
    with run_service(graded, env=base_env(simulator, root, **extra), name=f"{graded.name} ({label})") as svc, \
            httpx.Client() as client:
        yield Single(svc, client)
    simulator.reset(config=True)


def within(reply: osup.Reply) -> bool:
    return reply.status != 0 and reply.seconds <= DEADLINE + SLACK


# =========================================================================== retries with a deadline
@pytest.fixture(scope="module")
def retry_service(step_dir, tmp_path_factory, simulator):
    yield from single(step_dir, tmp_path_factory, simulator, "재시도 검사용", CIRCUIT_FAIL_MAX="20")


@check("step06.retry_deadline")
def test_retry_deadline(retry_service, simulator, tmp_path):
    s = retry_service
    # 1) 싼 확인: 업스트림(모든 모델)이 멈추면 데드라인 안에 깔끔한 오류. 데드라인이 없으면 여기서 바로 실패합니다.
    simulator.configure(hang_rate=1.0, hang_seconds=30)
    try:
        hung = s.chat("hang")
    finally:
        simulator.configure(hang_rate=0.0)
    record("hang_seconds", round(hung.seconds, 2))
    if not within(hung) or hung.status == 200 or hung.status == 500 or not osup.documented_error(hung.body):
        fail(expected=f"업스트림이 멈춰도 REQUEST_DEADLINE_SECONDS={DEADLINE} 안에 (+{SLACK}초) 502/503/504 오류 JSON",
             measured=hung.short(),
             hint="lesson.ipynb §2 '데드라인 있는 재시도' — 요청 하나의 전체 예산(REQUEST_DEADLINE_SECONDS)을 "
                  "정하고, 시도마다 asyncio.timeout(남은 시간) 을 거세요. 남은 시간이 없으면 재시도하지 않습니다.")
    n = attempts_of(simulator, hung.rid)
    if n > ATTEMPT_BOUND:
        fail(expected=f"요청 하나당 업스트림 시도 {ATTEMPT_BOUND}번 이하 (주 모델 {MAX_ATTEMPTS} + Fallback {MAX_ATTEMPTS})",
             measured=f"{n}번 (멈춘 업스트림)")

    # 2) 부하: 주 모델에 429/503 20 %, 현실적인 지연, 사용자 50명. 시뮬레이터의 429 는 RetryInfo 로 1~31초를
    #    알려 주므로 (데드라인 안에 들어가지 않으면 그 모델은 더 시도하지 않음) Fallback 모델은 멀쩡하게 둡니다:
    #    공급자마다 한도가 따로인 운영 환경처럼. 재시도 + Fallback 으로 가려야 성공률 99.5 % 를 넘습니다.
    results = tmp_path / "rows.jsonl"
    simulator.reset()
    simulator.configure(latency="realistic", error_429_rate=0.1, error_503_rate=0.1, fault_models=[PRIMARY])
    try:
        res = run_locust("step06_chat.py", s.svc.base_url, users=50, spawn_rate=50, run_time_s=10,
                         env={"GRADER_SERVICE_KEYS": SERVICE_KEY, "GRADER_RESULTS_FILE": str(results)})
        by_id = dict(simulator.stats().get("by_request_id") or {})
    finally:
        simulator.configure(latency="zero", error_429_rate=0.0, error_503_rate=0.0, fault_models=None)
    rows = osup.read_rows(results)
    ok = sum(1 for r in rows if r.get("status") == 200)
    rate = ok / len(rows) if rows else 0.0
    worst = max(by_id.values(), default=0)
    record("requests", res.requests)
    record("success_rate", round(rate, 4))
    record("p95_s", round(res.p95, 2))
    record("max_attempts_per_request", worst)
    if not rows:
        fail(expected="부하 중 응답", measured=res.summary())
    if rate < 0.995:
        fail(expected="주 모델의 429/503 20 % 에서 성공률 99.5 % 이상 (재시도와 Fallback 으로 가림)",
             measured=f"{rate:.1%} ({ok}/{len(rows)}), 응답 {osup.statuses(rows)}; {res.summary()}")
    if res.p95 >= 3.0:
        fail(expected="p95 < 3초", measured=res.summary())
    if worst > ATTEMPT_BOUND:
        over = sum(1 for v in by_id.values() if v > ATTEMPT_BOUND)
        fail(expected=f"요청 하나당 업스트림 시도 {ATTEMPT_BOUND}번 이하 (시뮬레이터가 X-Request-ID 별로 셈)",
             measured=f"최대 {worst}번, 상한을 넘은 요청 {over}개",
             hint="lesson.ipynb §2 '데드라인 있는 재시도' — SDK 재시도는 끄고(max_retries=1) 재시도는 한 곳에서만, "
                  "LLM_MAX_ATTEMPTS 번까지 하세요. 두 겹으로 쌓으면 시도가 곱해집니다.")


# =========================================================================== errors never retried
@pytest.fixture(scope="module")
def plain_service(step_dir, tmp_path_factory, simulator):
    yield from single(step_dir, tmp_path_factory, simulator, "오류 처리 검사용")


@check("step06.no_retry")
def test_no_retry(plain_service, simulator):
    s = plain_service
    problems: list[str] = []
    cases = [
        ("잘못된 요청/키 (업스트림 400)", {"valid_keys": ["grader-not-your-key"]}, 1, None),
        ("SAFETY 차단", {"safety_block_rate": 1.0}, 1, 422),
        ("깨진 200 본문", {"malformed_rate": 1.0}, ATTEMPT_BOUND, 502),
        ("빈 후보 목록", {"empty_candidates_rate": 1.0}, ATTEMPT_BOUND, 502),
    ]
    seen = {}
    for name, faults, max_attempts, want_status in cases:
        simulator.configure(**faults)
        try:
            r = s.chat("noretry")
            n = attempts_of(simulator, r.rid)
        finally:
            simulator.configure(**{k: CLEAN[k] for k in faults})
        seen[name] = f"{r.short()}, 시도 {n}번"
        if r.status == 0 or r.status == 200 or r.status >= 500 and r.status not in (502, 503, 504):
            problems.append(f"{name}: {r.short()} (200 도 500 도 아닌, 문서화된 4xx/5xx 오류 JSON 이어야 함)")
        elif not osup.documented_error(r.body):
            problems.append(f"{name}: HTTP {r.status} 본문이 {{\"error\": {{\"code\", \"message\"}}}} JSON 이 아님")
        elif want_status is not None and r.status != want_status:
            problems.append(f"{name}: HTTP {r.status} {r.code} (기대 {want_status})")
        if n > max_attempts:
            problems.append(f"{name}: 업스트림 시도 {n}번 (기대 {max_attempts}번 이하"
                            + (": 재시도해도 같은 답이 나오는 오류는 재시도하지 않음)" if max_attempts == 1 else ")"))
        elif n == 0 and r.status != 0:
            problems.append(f"{name}: 업스트림을 한 번도 부르지 않음")
        if r.seconds > DEADLINE + SLACK:
            problems.append(f"{name}: {r.seconds:.2f}초 (데드라인 {DEADLINE}초 + {SLACK}초 초과)")
    record("cases", seen)
    if problems:
        fail(expected="400 과 SAFETY 차단은 한 번만 시도하고 문서화된 오류(예: 502 upstream_bad_request, "
                      "422 content_blocked), 깨진 본문과 빈 후보는 502 오류 JSON (500 아님)",
             measured="; ".join(problems))


# =========================================================================== fallback
@pytest.fixture(scope="module")
def fallback_service(step_dir, tmp_path_factory, simulator):
    yield from single(step_dir, tmp_path_factory, simulator, "Fallback 검사용", CIRCUIT_FAIL_MAX="3")


def marked_fallback(r: osup.Reply) -> str | None:
    """None when `r` is an answer of the fallback model, marked; else what is wrong."""
    if r.status != 200:
        return r.short()
    body = r.body if isinstance(r.body, dict) else {}
    if body.get("fallback") is not True or body.get("model") != FALLBACK:
        return (f"200 이지만 표시가 없음: fallback={body.get('fallback')!r}, model={body.get('model')!r} "
                f"(기대 fallback=true, model={FALLBACK!r})")
    return None


@check("step06.fallback")
def test_fallback(fallback_service, simulator):
    s = fallback_service
    problems: list[str] = []
    # 0) 두 모델이 모두 멈춤: 주 모델 몫 + Fallback 은 남은 시간만 -> 데드라인 안에 깔끔한 오류 JSON.
    #    (Fallback 에 새 예산을 주면 여기서 데드라인을 넘습니다.) 서킷이 닫혀 있을 때 먼저 봅니다.
    simulator.configure(hang_rate=1.0, hang_seconds=30)
    both_hang = s.chat("fb-both-hang")
    record("both_hang", both_hang.short())
    if both_hang.status in (0, 200, 500) or not osup.documented_error(both_hang.body) or not within(both_hang):
        simulator.reset(config=True)
        fail(expected=f"주 모델과 Fallback 이 모두 멈추면 데드라인 {DEADLINE}+{SLACK}초 안에 오류 JSON (504/503)",
             measured=both_hang.short(),
             hint="lesson.ipynb §3 '서킷 브레이커와 Fallback' — Fallback 에는 새 예산이 아니라 요청 데드라인까지 "
                  "남은 시간만 주세요 (주 모델은 데드라인에서 FALLBACK_RESERVE_SECONDS 를 뺀 시간까지).")
    # a) 주 모델이 멈춤: 주 모델에 데드라인에서 FALLBACK_RESERVE 를 뺀 시간만 주고 Fallback 으로 답함.
    simulator.configure(fault_models=[PRIMARY], hang_rate=1.0, hang_seconds=30)
    hang = [s.chat("fb-hang")]
    why = marked_fallback(hang[0]) or (None if within(hang[0]) else f"{hang[0].seconds:.2f}초")
    if why:  # 싼 확인: 첫 요청부터 Fallback 이 없으면 나머지는 보내지 않습니다.
        simulator.reset(config=True)
        fail(expected=f"주 모델이 멈추면 {DEADLINE}+{SLACK}초 안에 Fallback 모델({FALLBACK})의 답, 응답에 표시 "
                      "(model, fallback=true)",
             measured=f"주 모델이 멈춤: {why}")
    hang.append(s.chat("fb-hang"))
    # b) 주 모델이 완전히 다운 (503): Fallback 이 답하고, 서킷이 열리면 주 모델을 아예 부르지 않음.
    simulator.configure(hang_rate=0.0, error_503_rate=1.0)
    down, primary_calls = [], []
    for _ in range(6):
        before = model_calls(simulator).get(PRIMARY, 0)
        down.append(s.chat("fb-down"))
        primary_calls.append(model_calls(simulator).get(PRIMARY, 0) - before)
    # c) 둘 다 다운: 데드라인 안에 깔끔한 오류 JSON.
    simulator.configure(fault_models=None)
    both = [s.chat("fb-both") for _ in range(2)]
    simulator.reset(config=True)
    record("hang", [r.short() for r in hang])
    record("down", [r.short() for r in down])
    record("primary_calls", primary_calls)
    record("both_down", [r.short() for r in both])

    for name, group in (("주 모델이 멈춤", hang), ("주 모델 다운(503)", down)):
        for r in group:
            why = marked_fallback(r)
            if why:
                problems.append(f"{name}: {why}")
            elif not within(r):
                problems.append(f"{name}: {r.seconds:.2f}초 (데드라인 {DEADLINE}초 + {SLACK}초 초과)")
    if not problems and any(primary_calls[-3:]):
        problems.append(f"CIRCUIT_FAIL_MAX=3 인데 주 모델이 다운된 뒤 요청마다 주 모델 호출 {primary_calls} "
                        f"(서킷이 열리면 마지막 요청들은 0 이어야 함)")
    for r in both:
        if r.status in (0, 200, 500) or not osup.documented_error(r.body) or not within(r):
            problems.append(f"두 모델 모두 다운: {r.short()} (기대: {DEADLINE}+{SLACK}초 안에 503 오류 JSON)")
    if problems:
        fail(expected=f"주 모델이 멈추거나 다운되면 {DEADLINE}+{SLACK}초 안에 Fallback({FALLBACK}) 이 답하고 "
                      "응답에 표시(model, fallback=true), 둘 다 다운이면 깔끔한 503 JSON",
             measured="; ".join(problems[:4]) + (f" 외 {len(problems) - 4}건" if len(problems) > 4 else ""))
    metrics = s.client.get(f"{s.svc.base_url}/metrics", timeout=5).text
    lines = [ln for ln in metrics.splitlines() if ln.startswith("llm_fallbacks_total{")]
    total = sum(float(ln.rsplit(" ", 1)[-1]) for ln in lines)
    record("llm_fallbacks_total", total)
    if total < len(hang) + len(down):
        fail(expected=f"/metrics 의 llm_fallbacks_total 합 >= Fallback 으로 답한 요청 {len(hang) + len(down)}개",
             measured=f"{total:g} ({len(lines)}개 시계열)",
             hint="lesson.ipynb §3 '서킷 브레이커와 Fallback' — Fallback 으로 답할 때마다 "
                  "llm_fallbacks_total{gen_ai_request_model, reason} 을 1 올리세요 (reason=error|timeout|circuit_open).")


# =========================================================================== load shedding
@pytest.fixture(scope="module")
def shed_service(step_dir, tmp_path_factory, simulator):
    yield from single(step_dir, tmp_path_factory, simulator, "부하 차단 검사용", MAX_IN_FLIGHT=str(MAX_IN_FLIGHT))


def shed_problems(rows: list[dict]) -> list[str]:
    bad = []
    for r in rows:
        if r.get("status") == 200:
            continue
        if r.get("status") != 503 or r.get("code") != "overloaded":
            bad.append(f"HTTP {r.get('status') or '응답 없음'} {r.get('code') or ''} ({r.get('seconds', 0):.2f}초)")
        elif not osup.retry_after_ok(r.get("retry_after")):
            bad.append(f"503 overloaded 에 Retry-After 없음/잘못됨 ({r.get('retry_after')!r})")
        elif r.get("seconds", 0) > 0.5:
            bad.append(f"503 overloaded 가 {r['seconds']:.2f}초 뒤 (즉시가 아님)")
    return bad


@check("step06.load_shedding")
def test_load_shedding(shed_service, simulator, tmp_path):
    s = shed_service
    simulator.configure(latency="realistic", max_concurrency=UPSTREAM_CAPACITY)
    try:
        # 1) 싼 확인: 동시에 MAX_IN_FLIGHT 의 4배를 보내면 넘친 요청은 바로 503 overloaded.
        n = MAX_IN_FLIGHT * 4
        probe = osup.burst(s.svc.base_url, SERVICE_KEY, n, n, timeout=DEADLINE + 2.5)
        rows = [{"status": r.status, "code": r.code, "retry_after": r.headers.get("retry-after"),
                 "seconds": r.seconds} for r in probe]
        record("probe", osup.count_by(probe))
        bad = shed_problems(rows)
        if bad or not any(r["code"] == "overloaded" for r in rows):
            fail(expected=f"MAX_IN_FLIGHT={MAX_IN_FLIGHT} 를 넘는 동시 요청은 기다리지 않고 바로 503 overloaded "
                          "+ Retry-After",
                 measured=f"동시 요청 {n}개: {osup.count_by(probe)}" + (f"; {bad[0]}" if bad else ""))
        # 2) 부하: 사용자 30명이 1초에 한 번씩 (초당 30개: 처리 용량의 약 10배). 503 을 받고 곧바로 다시 보내는
        #    클라이언트(초당 수백 개)는 서비스 CPU 를 태우는 다른 문제라, 간격을 둡니다 (Retry-After 를 따르는 것처럼).
        results = tmp_path / "rows.jsonl"
        res = run_locust("step06_chat.py", s.svc.base_url, users=30, spawn_rate=30, run_time_s=8,
                         env={"GRADER_SERVICE_KEYS": SERVICE_KEY, "GRADER_RESULTS_FILE": str(results),
                              "GRADER_PACING": "1"})
    finally:
        simulator.configure(latency="zero", max_concurrency=None)
    rows = osup.read_rows(results)
    record("load", osup.statuses(rows))
    record("p95_s", round(res.p95, 2))
    bad = shed_problems(rows)
    if not any(r.get("status") == 200 for r in rows):
        fail(expected="과부하에서도 용량만큼은 200", measured=f"{osup.statuses(rows)}; {res.summary()}")
    if bad:
        fail(expected="과부하에서 200 이 아닌 응답은 모두 즉시(0.5초 안) 503 overloaded + Retry-After",
             measured=f"{len(bad)}개: {bad[0]} (전체 {osup.statuses(rows)})")
    if res.p95 >= 3.0:
        fail(expected="과부하에서도 모든 응답의 p95 < 3초", measured=res.summary())


# =========================================================================== the fleet: Redis + 2 replicas + nginx
@dataclass
class Fleet:
    redis: Any = None
    replicas: Any = None
    balancer: Any = None
    ca: Any = None
    error: str | None = None          # why the balancer did not start (the learner's fragment, nginx -t)
    error_detail: str | None = None
    verify: Any = True
    notes: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.balancer.https_url

    def client(self) -> httpx.Client:
        return httpx.Client(verify=self.verify)


def build_fleet(step_dir: Path, root: Path, simulator, with_redis: bool, **extra: str):
    """Generator: yields a Fleet (its `error` set when the learner's balancer did not start)."""
    from coursekit.balancer import Balancer, BalancerError, TestCA, require_nginx
    from coursekit.redis_server import RedisServer, require_redis
    from coursekit.replicas import ReplicaError, ReplicaSet

    require_nginx("step 06 의 로드 밸런서 검사에는 nginx 가 필요합니다")
    if with_redis:
        require_redis("step 06 의 공유 Rate Limit 검사에는 redis-server 가 필요합니다")
    graded = copy_step(step_dir, root)
    fragment = graded / osup.FRAGMENT
    fleet = Fleet()
    with ExitStack() as stack:
        env = base_env(simulator, root, **extra)
        if with_redis:
            fleet.redis = stack.enter_context(RedisServer())
            env["REDIS_URL"] = fleet.redis.url
        try:
            fleet.replicas = stack.enter_context(ReplicaSet(graded, n=2, env=harness.service_env(env)))
        except ReplicaError as exc:
            text = str(exc).strip()
            fail(expected=f"`uvicorn main:app` 복제본 두 개가 {graded.name} 폴더에서 시작되고 /health 가 200",
                 measured=text.splitlines()[0], detail="\n".join(text.splitlines()[1:])[-2500:])
        if not fragment.is_file():
            fleet.error = f"{osup.FRAGMENT} 가 없습니다"
            yield fleet
            return
        fleet.ca = stack.enter_context(TestCA())
        fleet.verify = str(fleet.ca.ca_file)
        try:
            fleet.balancer = stack.enter_context(Balancer(fragment, replicas=fleet.replicas.addresses,
                                                          tls=fleet.ca))
        except BalancerError as exc:  # nginx -t or start-up failed: the learner's fragment
            text = str(exc).strip()
            fleet.error = text.splitlines()[0] if text else type(exc).__name__
            fleet.error_detail = "\n".join(text.splitlines()[1:])[-2500:]
        yield fleet


def need_client_keys(replies: list[osup.Reply], which: str) -> None:
    """The limit is per client key: the grader's extra clients come in SERVICE_API_KEYS."""
    if replies and all(r.status == 401 for r in replies):
        fail(expected=f"SERVICE_API_KEYS 에 넣은 키({which})도 인증됨 (키 하나 = 클라이언트 하나)",
             measured=f"요청 {len(replies)}개 모두 401",
             hint="lesson.ipynb §5 'API 키별 Rate Limiting' — SERVICE_API_KEY 말고도 SERVICE_API_KEYS(쉼표로 구분한 "
                  "SecretStr) 의 키를 모두 받으세요 (secrets.compare_digest 로 하나씩). 한도는 키마다 따로 셉니다.")


def need_balancer(fleet: Fleet) -> None:
    if fleet.error:
        blocked("step06.balancer", measured=fleet.error)


@pytest.fixture(scope="module")
def fleet(step_dir, tmp_path_factory, simulator):
    simulator.reset(config=True)
    root = tmp_path_factory.mktemp("step06-fleet")
    yield from build_fleet(step_dir, root, simulator, with_redis=True, RATE_LIMIT=f"{LIMIT}/minute")
    simulator.reset(config=True)


@check("step06.balancer")
def test_balancer(fleet):
    if fleet.error:
        fail(expected=f"{osup.FRAGMENT} 를 채운 nginx 가 `nginx -t` 를 통과하고 HTTP/HTTPS 포트에서 시작됨",
             measured=fleet.error, detail=fleet.error_detail)
    # 키 없는 POST /chat: 복제본이 401 로 답하고 로그 줄을 남김 (/health 는 로그가 없고, 키를 쓰면 한도를 씀).
    sent = []
    with fleet.client() as client:
        for i in range(6):
            sent.append(osup.chat(client, fleet.url, None, QUESTION, timeout=10, rid=rid(f"lb{i}")))
    record("replies", osup.count_by(sent))
    if any(r.status != 401 for r in sent):
        fail(expected="밸런서(HTTPS)를 거친, 키 없는 POST /chat 6개가 모두 복제본의 401",
             measured=", ".join(r.short() for r in sent))
    def count() -> list[int]:
        out = []
        for i in range(2):
            ids = {d.get("request_id") for d in osup.request_lines(fleet.replicas.logs(i))}
            out.append(sum(1 for r in sent if r.rid in ids))
        return out

    harness.wait_until(lambda: sum(count()) >= len(sent), 2.0)  # the last line may still be on its way
    served = count()
    record("served_by_replica", served)
    if min(served) == 0:
        fail(expected="복제본 두 개가 모두 요청을 받음 (각 복제본의 JSON 로그 줄에서 채점기가 보낸 X-Request-ID 로 셈)",
             measured=f"복제본별로 받은 요청 {served} (요청 6개)")


def fail_opens(fleet: Fleet) -> float:
    """llm_ratelimit_errors_total summed over both replicas (requests the service itself let through, fail open)."""
    total = 0.0
    with httpx.Client() as client:
        for url in fleet.replicas.urls:
            try:
                total += osup.metric_sum(client.get(f"{url}/metrics", timeout=5).text, "llm_ratelimit_errors_total")
            except httpx.HTTPError:
                pass
    return total


@check("step06.rate_limit")
def test_rate_limit(fleet):
    need_balancer(fleet)
    opened_before = fail_opens(fleet)
    replies = osup.burst(fleet.url, SERVICE_KEY, BURST, 12, timeout=10, verify=fleet.verify)
    # 2코어 기계의 버스트 중 Redis 호출이 짧은 타임아웃(0.1초)을 넘기면 서비스는 문서대로 fail open 하고
    # llm_ratelimit_errors_total 을 올립니다. 서비스가 스스로 센 그 수만큼(최대 REOPEN_SLACK)만 한도 위 성공을 허용합니다.
    opened = min(int(fail_opens(fleet) - opened_before), REOPEN_SLACK)
    ok = [r for r in replies if r.status == 200]
    limited = [r for r in replies if r.status == 429]
    other = [r for r in replies if r.status not in (200, 429)]
    record("burst", osup.count_by(replies))
    fleet.notes["rate_limit_works"] = 0 < len(ok) <= LIMIT + opened and bool(limited)
    if other:
        fail(expected=f"키 A 의 버스트 {BURST}개는 200 또는 429 만",
             measured=f"{osup.count_by(replies)}; 예: {other[0].short()}")
    if not LIMIT <= len(ok) <= LIMIT + opened:
        hint = None
        if len(ok) > LIMIT and len(ok) <= 2 * LIMIT and limited:
            hint = ("lesson.ipynb §5 'API 키별 Rate Limiting' — 복제본마다 메모리에 한도를 세면 두 복제본에서 "
                    "한도가 두 배가 됩니다. REDIS_URL 이 있으면 limits 의 Redis 저장소(async+redis://)를 쓰세요.")
        fail(expected=f"RATE_LIMIT={LIMIT}/minute: 복제본 두 개를 합쳐 정확히 {LIMIT}개 성공, 나머지 429 "
                      f"(서비스가 llm_ratelimit_errors_total 로 센 fail open {opened}개까지 더 허용)",
             measured=f"성공 {len(ok)}개, 429 {len(limited)}개 (버스트 {BURST}개, 공유 Redis)", hint=hint)
    bad = []
    for r in limited:
        if not osup.retry_after_ok(r.headers.get("retry-after")):
            bad.append(f"Retry-After={r.headers.get('retry-after')!r}")
        elif r.code != "rate_limited":
            bad.append(f"오류 코드 {r.code!r}")
        elif "limit" not in osup.ratelimit_fields(r.headers.get("ratelimit")) or not r.headers.get("ratelimit-policy"):
            bad.append(f"RateLimit={r.headers.get('ratelimit')!r}, RateLimit-Policy={r.headers.get('ratelimit-policy')!r}")
    if bad:
        fail(expected="429 마다 rate_limited 오류 JSON, Retry-After(정수 초 >= 1), RateLimit, RateLimit-Policy 헤더",
             measured=f"429 {len(limited)}개 중 {len(bad)}개가 다름: {bad[0]}",
             hint="lesson.ipynb §5 'API 키별 Rate Limiting' — 429 에는 Retry-After: <창이 풀릴 때까지 초> 와 "
                  "RateLimit-Policy: <한도>;w=<창>, RateLimit: limit=, remaining=, reset= 를 붙이세요.")
    # 다른 키(B)는 보통 속도로: 한 번도 429 가 아니어야 함 (키가 아니라 IP 로 세면 여기서 걸림).
    with fleet.client() as client:
        other_key = [osup.chat(client, fleet.url, KEY_B, QUESTION, timeout=10) for _ in range(4)]
    record("key_b", [r.status for r in other_key])
    need_client_keys(other_key, "키 B")
    if any(r.status != 200 for r in other_key):
        fail(expected="키 A 가 한도를 넘긴 직후에도 키 B 의 보통 요청 4개는 모두 200",
             measured=", ".join(r.short() for r in other_key),
             hint="lesson.ipynb §5 'API 키별 Rate Limiting' — 밸런서 뒤에서는 모든 요청의 클라이언트 IP 가 "
                  "nginx 입니다. 한도의 키는 API 키(sha256 앞부분)여야 합니다.")
    if not osup.ratelimit_fields(other_key[0].headers.get("ratelimit")):
        fail(expected="성공한 응답에도 RateLimit 헤더 (limit, remaining, reset)",
             measured=f"RateLimit={other_key[0].headers.get('ratelimit')!r}")


@check("step06.redis_outage")
def test_redis_outage(fleet):
    need_balancer(fleet)
    with fleet.client() as client:
        base = [osup.chat(client, fleet.url, KEY_C, QUESTION, timeout=10) for _ in range(2)]
        need_client_keys(base, "키 C")
        # 멈춘 Redis (SIGSTOP: 연결은 되지만 답이 없음) 다음에 꺼진 Redis (연결 거부).
        fleet.redis.freeze()
        try:
            during = [osup.chat(client, fleet.url, KEY_C, QUESTION, timeout=10) for _ in range(3)]
        finally:
            fleet.redis.thaw()
        fleet.redis.stop()
        try:
            during += [osup.chat(client, fleet.url, KEY_C, QUESTION, timeout=10) for _ in range(3)]
        finally:
            fleet.redis.start()
    record("during_outage", [r.short() for r in during])
    bad = [r for r in during if r.status != 200]
    if bad:
        fail(expected="Redis 가 멈추거나(SIGSTOP) 꺼져도 5xx 없이 요청을 처리 (fail open, 경고 로그와 메트릭)",
             measured=f"Redis 장애 중 응답 {len(during)}개: {osup.count_by(during)}; 예: {bad[0].short()}")
    slow = osup.median([r.seconds for r in during]) - osup.median([r.seconds for r in base])
    record("added_seconds", round(slow, 3))
    if slow > 0.5:
        fail(expected="Redis 가 멈춰도 요청이 0.5초 넘게 느려지지 않음 (짧은 소켓 타임아웃)",
             measured=f"중앙값이 {slow:.2f}초 늘어남")
    # Redis 가 다시 뜬 뒤 한도가 돌아올 때까지 (끊긴 풀 연결, 장애 뒤 잠시 Redis 를 건너뛰는 설계) 다른 키(F)로
    # 조금씩 보내 봅니다: F 의 요청이 모두 429 면 다시 세고 있는 것. RECOVERY_SECONDS 안에 돌아와야 합니다.
    restarted = time.monotonic()
    recovered = None
    while time.monotonic() - restarted < RECOVERY_SECONDS:
        warm = osup.burst(fleet.url, KEY_F, 12, 12, timeout=10, verify=fleet.verify)
        if all(r.status == 429 for r in warm):  # 두 복제본 모두 다시 셈 (한 복제본만 돌아오면 200 이 섞임)
            recovered = time.monotonic() - restarted
            break
        time.sleep(0.2)
    record("recovery_seconds", None if recovered is None else round(recovered, 2))
    if recovered is None:
        if not fleet.notes.get("rate_limit_works"):
            blocked("step06.rate_limit", measured=f"Redis 재시작 뒤 {RECOVERY_SECONDS:.0f}초 동안 키 F 에 429 가 없음 (한도 없음)")
        fail(expected=f"Redis 가 다시 뜨면 {RECOVERY_SECONDS:.0f}초 안에 한도가 다시 동작 (키 F 가 한도를 넘으면 429)",
             measured=f"{RECOVERY_SECONDS:.0f}초 동안 429 없음 (계속 fail open)")
    again = osup.burst(fleet.url, KEY_D, 3 * LIMIT, 6, timeout=10, verify=fleet.verify)
    ok = sum(1 for r in again if r.status == 200)
    record("after_restart", osup.count_by(again))
    # 장애 전부터 풀에 남아 있던 끊긴 연결을 처음 쓰는 요청 몇 개는 fail open 으로 통과할 수 있습니다 (문서화된 동작).
    if not LIMIT <= ok <= LIMIT + REOPEN_SLACK:
        fail(expected=f"Redis 가 다시 뜨면 한도가 다시 동작: 버스트 {len(again)}개 중 {LIMIT}개 성공 "
                      f"(끊긴 연결로 fail open 된 요청 {REOPEN_SLACK}개까지 허용)",
             measured=f"{osup.count_by(again)}")


@check("step06.tls")
def test_tls(fleet):
    need_balancer(fleet)
    with fleet.client() as client:
        r = osup.request(client, "GET", f"{fleet.url}/health", timeout=5)
    record("https_health", r.short())
    if r.status != 200:
        fail(expected="https://…/health 가 테스트 CA 로 검증되고 200", measured=r.short())
    hsts = r.headers.get("strict-transport-security", "")
    record("hsts", hsts)
    import re
    m = re.search(r"max-age\s*=\s*(\d+)", hsts)
    if not m or int(m.group(1)) <= 0:
        fail(expected="HTTPS 응답에 Strict-Transport-Security: max-age=<양수>",
             measured=f"Strict-Transport-Security: {hsts}" if hsts else "Strict-Transport-Security 헤더가 없습니다",
             hint="lesson.ipynb §9 '전송 중 암호화 TLS' — HTTPS server 블록에 "
                  "add_header 로 Strict-Transport-Security 헤더를 넣으세요 (max-age 는 1년(31536000초) 이상, "
                  "오류 응답에도 붙도록 always).")
    with httpx.Client() as plain:
        g = osup.request(plain, "GET", f"{fleet.balancer.http_url}/health", timeout=5)
        p = osup.chat(plain, fleet.balancer.http_url, KEY_E, QUESTION, timeout=5)
    record("http", [g.short(), p.short()])
    for what, x in (("GET /health", g), ("POST /chat", p)):
        if x.status == 0:
            continue  # 평문 HTTP 를 아예 받지 않음 (거절)
        loc = x.headers.get("location", "")
        if x.status not in (301, 302, 307, 308) or not loc.startswith("https://"):
            fail(expected="평문 HTTP 는 https:// 로 리디렉션(301/308)하거나 거절, 답하지 않음",
                 measured=f"http:// {what} -> {x.short()}, Location={loc or '없음'}",
                 hint="lesson.ipynb §9 '전송 중 암호화 TLS' — HTTP server 블록은 "
                      "return 308 https://$host:<HTTPS 포트>$request_uri; 만 두세요.")


# =========================================================================== graceful shutdown
@pytest.fixture(scope="module")
def calm_fleet(step_dir, tmp_path_factory, simulator):
    simulator.reset(config=True)
    root = tmp_path_factory.mktemp("step06-rolling")
    yield from build_fleet(step_dir, root, simulator, with_redis=False)
    simulator.reset(config=True)


def failed_access(balancer) -> str:
    """The first failed requests in nginx's access log and the last error-log lines (which replica, why)."""
    lines = [ln for ln in balancer.access_log() if '" 200 ' not in ln]
    err = [ln for ln in balancer.error_log().splitlines() if "[error]" in ln or "[crit]" in ln]
    return ("nginx access.log 의 첫 실패:\n" + "\n".join(lines[:6]) + "\nnginx error.log 의 첫 오류:\n"
            + "\n".join(err[:6]))


@check("step06.graceful")
def test_graceful(calm_fleet, simulator, tmp_path):
    fl = calm_fleet
    # 1) 싼 확인: 복제본마다 GET /ready -> 200 {"status": "ready"}
    with httpx.Client() as client:
        ready = [osup.request(client, "GET", f"{u}/ready", timeout=5) for u in fl.replicas.urls]
    record("ready", [r.short() for r in ready])
    for r in ready:
        if r.status != 200 or not (isinstance(r.body, dict) and r.body.get("status") == "ready"):
            fail(expected="복제본마다 GET /ready -> 200 {\"status\": \"ready\"} (종료가 시작되면 503)",
                 measured=r.short(),
                 hint="lesson.ipynb §8 '우아한 종료와 롤링 재시작' — /ready 를 만들고 lifespan 의 종료 단계에서 "
                      "준비 상태를 내리세요. /health 는 살아 있음, /ready 는 트래픽을 받을 준비입니다.")
    need_balancer(fl)
    with fl.client() as client:
        for _ in range(4):
            osup.request(client, "GET", f"{fl.url}/health", timeout=5)
    used = [a for a in fl.replicas.addresses if fl.balancer.served(a)]
    if len(used) < 2:
        blocked("step06.balancer", measured=f"밸런서를 거친 요청 4개를 받은 복제본 {len(used)}개 (두 개여야 롤링 재시작이 가능)")
    # 2) 부하 중에 복제본 하나에 SIGTERM (재시작), 이어서 둘 다 롤링 재시작. 실패한 요청이 0 이어야 합니다.
    results = tmp_path / "rows.jsonl"
    out: dict[str, Any] = {}
    simulator.configure(latency="realistic")

    def load():
        try:
            out["res"] = run_locust("step06_chat.py", fl.url, users=16, spawn_rate=16, run_time_s=20,
                                    env={"GRADER_SERVICE_KEYS": SERVICE_KEY, "GRADER_RESULTS_FILE": str(results),
                                         "GRADER_CA_FILE": str(fl.verify), "GRADER_CONNECTION_CLOSE": "1"})
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            out["exc"] = exc

    t = threading.Thread(target=load, daemon=True)
    t.start()
    steps = []
    try:
        time.sleep(3)
        started = time.monotonic()
        # 운영의 롤링 재시작처럼: 복제본을 먼저 밸런서에서 빼고(nginx 다시 읽기: 새 연결은 다른 복제본으로, 이미 보낸
        # 요청은 계속), 곧바로 SIGTERM. 그 복제본에는 처리 중인 요청만 남고, 서비스가 그것을 끝내고 종료해야 합니다.
        # 다시 시작해 /health 가 답하면 밸런서에 되돌립니다 (쿠버네티스: 엔드포인트에서 빠진 뒤 SIGTERM, readiness).
        # 빼지 않고 SIGTERM 만 보내면 uvicorn 이 듣기 소켓을 닫는 순간 nginx 가 연 연결의 POST 가 502 가 될 수
        # 있습니다 (nginx 는 이미 보낸 POST 를 다시 보내지 않음): 서비스의 잘못이 아니므로 그렇게 재지 않습니다.
        timings = fl.replicas.rolling_restart(balancer=fl.balancer)
        for i, one in enumerate(timings):
            steps.append(f"복제본 {i + 1}: 밸런서에서 뺀 뒤 SIGTERM, 종료 {one['exit_seconds']:.1f}초, "
                         f"다시 시작 {one['start_seconds']:.1f}초")
        steps.append(f"롤링 재시작 {time.monotonic() - started:.1f}초")
    except Exception as exc:  # noqa: BLE001 - reported as a failed check with its text
        steps.append(f"재시작 실패: {exc}")
    finally:
        t.join(timeout=120)
        simulator.configure(latency="zero")
    if "exc" in out:
        raise out["exc"]
    res = out["res"]
    rows = osup.read_rows(results)
    # 서비스가 데드라인 안에 JSON 으로 낸 업스트림 응답(upstream_* 코드: 실제 지연의 긴 꼬리에서 모델 둘 다 늦음)은
    # 재시작과 상관이 없으므로 세지 않습니다 (그 비율은 step06.retry_deadline 이 잽니다). 잃은 요청 = 응답이 없거나
    # 서비스가 아닌 nginx 가 답한 것 (502 등, JSON 오류 코드 없음)이나 서비스의 다른 오류.
    upstream = [r for r in rows if r.get("status") != 200 and str(r.get("code") or "").startswith("upstream_")]
    failed = [r for r in rows if r.get("status") != 200 and not str(r.get("code") or "").startswith("upstream_")]
    record("load", osup.statuses(rows))
    record("steps", steps)
    if any(s.startswith("재시작 실패") for s in steps):
        fail(expected="SIGTERM 뒤 복제본이 정상 종료되고 같은 포트에서 다시 시작됨", measured=steps[-1])
    if not rows or failed:
        fail(expected="부하 중 복제본 SIGTERM 과 롤링 재시작 동안 실패한 요청 0개 (서비스가 데드라인 안에 낸 upstream_* 답은 제외)",
             measured=f"요청 {len(rows)}개 중 실패 {len(failed)}개 (업스트림 답 {len(upstream)}개는 제외): "
                      f"{osup.statuses(rows)}; {res.summary()}",
             detail=failed_access(fl.balancer))


# =========================================================================== response cache + coalescing (part 2)
CACHE_TTL = 3.0                          # CACHE_TTL_SECONDS (기본 300)
CACHE_MODEL = "gemini-3.5-pro"           # LLM_MODEL (기본이 아닌 모델)
CACHE_MODEL_B = "gemini-3.5-flash-lite"  # 모델만 다른 서비스 B
CACHE_PROMPT = "v1"                      # PROMPT_VERSION (기본 v2)
CACHE_PROMPT_C = "v2"                    # 프롬프트 버전만 다른 서비스 C
HIT_P50_SECONDS = 0.010
COALESCE_N = 100
COALESCE_DELAY = 0.5                     # 업스트림의 첫 토큰 지연 (같은 질문 100개가 동시에 기다리는 시간)
Q1 = "Pro 요금제의 API 호출 한도는 얼마인가요?"
Q1_VARIANT = "  pro 요금제의   ＡＰＩ 호출 한도는\t얼마인가요?  "   # 공백, 대소문자, 전각 문자만 다름 (NFKC)


@dataclass
class CacheFleet:
    redis: Any
    a: Any                # 서비스 A (모델 M, 프롬프트 v)
    a2: Any               # A 와 같은 설정의 두 번째 복제본
    b: Any                # 모델만 다름
    c: Any                # 프롬프트 버전만 다름
    client: httpx.Client

    def ask(self, svc, message: str, tag: str) -> osup.Reply:
        return osup.chat(self.client, svc.base_url, SERVICE_KEY, message, timeout=DEADLINE + 2.5, rid=rid(tag))


@pytest.fixture(scope="module")
def cache_fleet(step_dir, tmp_path_factory, simulator):
    from concurrent.futures import ThreadPoolExecutor

    from coursekit.redis_server import RedisServer, require_redis

    require_redis("step 06 의 응답 캐시 검사에는 redis-server 가 필요합니다")
    simulator.reset(config=True)
    root = tmp_path_factory.mktemp("step06-cache")
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        common = {"LLM_MODEL": CACHE_MODEL, "PROMPT_VERSION": CACHE_PROMPT, "CACHE_TTL_SECONDS": str(CACHE_TTL),
                  "REDIS_URL": redis.url, "CIRCUIT_FAIL_MAX": "1000", "MAX_IN_FLIGHT": "300"}
        variants = [("A", {}), ("A2", {}), ("B", {"LLM_MODEL": CACHE_MODEL_B}), ("C", {"PROMPT_VERSION": CACHE_PROMPT_C})]

        def start(item):
            label, extra = item
            sub = root / label
            sub.mkdir()
            graded = copy_step(step_dir, sub)
            env = base_env(simulator, sub, **{**common, **extra})
            return stack.enter_context(run_service(graded, env=env, name=f"{graded.name} (캐시 검사용 {label})"))

        with ThreadPoolExecutor(max_workers=len(variants)) as pool:   # 네 서비스를 함께 띄움 (시작 시간 절약)
            svcs = list(pool.map(start, variants))
        client = stack.enter_context(httpx.Client())
        yield CacheFleet(redis, *svcs, client)
    simulator.reset(config=True)


def calls(sim, model: str | None = None) -> int:
    """Upstream calls the simulator received (for one model, or all)."""
    s = sim.stats()
    return int((s.get("by_model") or {}).get(model, 0)) if model else int(s.get("requests_total", 0))


def xcache(r: osup.Reply) -> str:
    return (r.headers.get("x-cache") or "").strip().lower() or "없음"


def answer_text(r: osup.Reply) -> str | None:
    return r.body.get("response") if isinstance(r.body, dict) else None


def body_field(r: osup.Reply, name: str) -> Any:
    return r.body.get(name) if isinstance(r.body, dict) else None


@check("step06.cache")
def test_cache(cache_fleet, simulator):
    f = cache_fleet
    # 1) 싼 확인: 처음 묻는 질문은 X-Cache: miss, 업스트림 호출 1번.
    before = calls(simulator)
    first = f.ask(f.a, Q1, "cache-miss")
    set_at = time.monotonic()
    n = calls(simulator) - before
    record("first", f"{first.short()}, X-Cache {xcache(first)}, 업스트림 호출 {n}번")
    if first.status != 200:
        fail(expected="처음 묻는 질문에 200", measured=first.short())
    if xcache(first) != "miss" or n != 1:
        fail(expected="처음 묻는 질문: 응답 헤더 X-Cache: miss, 업스트림 호출 1번",
             measured=f"X-Cache {xcache(first)}, 업스트림 호출 {n}번")
    original = answer_text(first)
    first_id = body_field(first, "response_id")

    # 2) 같은 질문 20번: 모두 hit, 업스트림 호출 0번, 빠름, 응답 id 는 매번 새로, 답은 같음.
    before = calls(simulator)
    hits = [f.ask(f.a, Q1, "cache-hit") for _ in range(20)]
    n = calls(simulator) - before
    seen = {}
    for r in hits:
        seen[f"{r.status} {xcache(r)}"] = seen.get(f"{r.status} {xcache(r)}", 0) + 1
    p50 = osup.median([r.seconds for r in hits])
    ids = {body_field(r, "response_id") for r in hits}
    record("repeat", seen)
    record("repeat_upstream_calls", n)
    record("hit_p50_ms", round(p50 * 1000, 2))
    if any(r.status != 200 or xcache(r) != "hit" for r in hits) or n:
        fail(expected="같은 질문을 20번 더: 모두 200, X-Cache: hit, 업스트림 호출 0번",
             measured=f"응답 {seen}, 업스트림 호출 {n}번")
    not_cached = [body_field(r, "cached") for r in hits if body_field(r, "cached") is not True]
    if not_cached:
        fail(expected="캐시가 답한 응답 본문에 \"cached\": true", measured=f"20개 중 {len(not_cached)}개가 cached={not_cached[0]!r}")
    wrong = [answer_text(r) for r in hits if answer_text(r) != original]
    if wrong:
        fail(expected="캐시가 답한 응답의 response 는 처음 답과 같음", measured=f"다른 답 {len(wrong)}개: {wrong[0]!r:.80}")
    if len(ids - {None, first_id}) != len(hits):
        fail(expected="캐시가 답해도 응답마다 새 response_id (피드백은 응답 하나에 한 번)",
             measured=f"응답 {len(hits)}개에 새 response_id {len(ids - {None, first_id})}개")
    if p50 >= HIT_P50_SECONDS:
        fail(expected=f"캐시 적중 응답의 p50 < {HIT_P50_SECONDS * 1000:.0f} ms", measured=f"{p50 * 1000:.1f} ms")

    # 3) 공백, 대소문자, 전각 문자만 다른 질문 -> hit. 4) 같은 설정의 다른 복제본 A2 -> hit (Redis 공유).
    before = calls(simulator)
    variant = f.ask(f.a, Q1_VARIANT, "cache-variant")
    other_replica = f.ask(f.a2, Q1, "cache-a2")
    n = calls(simulator) - before
    record("variant", f"{variant.short()}, X-Cache {xcache(variant)}")
    record("replica_a2", f"{other_replica.short()}, X-Cache {xcache(other_replica)}")
    if variant.status != 200 or xcache(variant) != "hit":
        fail(expected=f"공백, 대소문자, 전각 문자만 다른 질문 {Q1_VARIANT!r} 도 X-Cache: hit "
                      "(정규화: NFKC, casefold, 공백을 하나로, 앞뒤 공백 제거)",
             measured=f"{variant.short()}, X-Cache {xcache(variant)}")
    if other_replica.status != 200 or xcache(other_replica) != "hit" or n:
        fail(expected="같은 설정의 다른 복제본(A2)도 같은 질문에 X-Cache: hit, 업스트림 호출 0번 "
                      "(REDIS_URL 의 Redis 를 복제본이 함께 씀)",
             measured=f"{other_replica.short()}, X-Cache {xcache(other_replica)}, 업스트림 호출 {n}번",
             hint="lesson.ipynb §11 '응답 캐시와 요청 합치기' — REDIS_URL 이 있으면 캐시를 프로세스 메모리가 아니라 "
                  "Redis 에 두세요 (SET 키 값 EX CACHE_TTL_SECONDS). 복제본마다 메모리에 두면 다른 복제본은 다시 묻습니다.")

    # 5) 모델만 다른 서비스 B, 프롬프트 버전만 다른 서비스 C: 같은 Redis 라도 A 의 답을 쓰면 안 됨.
    for svc, label, model, what in ((f.b, "B", CACHE_MODEL_B, f"LLM_MODEL={CACHE_MODEL_B}"),
                                    (f.c, "C", CACHE_MODEL, f"PROMPT_VERSION={CACHE_PROMPT_C}")):
        before = calls(simulator, model)
        r = f.ask(svc, Q1, f"cache-{label}")
        n = calls(simulator, model) - before
        record(f"service_{label}", f"{r.short()}, X-Cache {xcache(r)}, {model} 호출 {n}번")
        if r.status != 200 or xcache(r) != "miss" or n != 1:
            field_name = "모델" if label == "B" else "프롬프트 버전"
            fail(expected=f"{what} 인 서비스 {label} 는 같은 Redis 에서도 A 의 답을 쓰지 않음: X-Cache: miss, "
                          f"{model} 호출 1번",
                 measured=f"{r.short()}, X-Cache {xcache(r)}, {model} 호출 {n}번",
                 hint=f"lesson.ipynb §11 '응답 캐시와 요청 합치기' — 캐시 키에 {field_name}이 빠졌습니다. 키는 "
                      "sha256([LLM_MODEL, PROMPT_VERSION, 정규화한 질문]) 입니다: 모델이나 프롬프트를 바꾸면 예전 답을 "
                      "쓰면 안 됩니다.")

    # 6) 오류는 캐시하지 않음: 모든 모델이 503 이면 오류, 장애가 끝나면 같은 질문은 miss + 업스트림, 그다음 hit.
    q_err = "로그는 얼마 동안 보관되나요?"
    simulator.configure(error_503_rate=1.0)
    try:
        err = f.ask(f.a, q_err, "cache-error")
    finally:
        simulator.configure(error_503_rate=0.0)
    before = calls(simulator)
    again = f.ask(f.a, q_err, "cache-after-error")
    n = calls(simulator) - before
    third = f.ask(f.a, q_err, "cache-after-error-hit")
    record("error_then", [err.short(), f"{again.short()}, X-Cache {xcache(again)}, 호출 {n}번",
                          f"{third.short()}, X-Cache {xcache(third)}"])
    if err.status == 200:
        fail(expected="모든 모델이 503 이면 오류 응답 (Fallback 도 실패)", measured=err.short())
    if again.status != 200 or xcache(again) != "miss" or n < 1:
        fail(expected="오류는 캐시하지 않음: 장애가 끝난 뒤 같은 질문은 200, X-Cache: miss, 업스트림 호출",
             measured=f"장애 중 {err.short()}; 장애 뒤 {again.short()}, X-Cache {xcache(again)}, 업스트림 호출 {n}번",
             hint="lesson.ipynb §11 '응답 캐시와 요청 합치기' — 오류(예외)는 캐시에 넣지 말고, 합치기(Coalescing)의 "
                  "진행 중 작업은 끝나면(실패해도) 목록에서 빼세요. 남아 있으면 다음 요청이 끝난 실패를 다시 받습니다.")
    if third.status != 200 or xcache(third) != "hit":
        fail(expected="장애 뒤 정상 답은 캐시됨: 한 번 더 물으면 X-Cache: hit",
             measured=f"{third.short()}, X-Cache {xcache(third)}")

    # 7) Fallback 의 답은 캐시하지 않음: 주 모델이 다운이면 Fallback 이 답하고, 주 모델이 돌아오면 다시 주 모델에게 물음.
    q_fb = "서비스 장애가 나면 어디서 확인하나요?"
    simulator.configure(fault_models=[CACHE_MODEL], error_503_rate=1.0)
    try:
        fb = f.ask(f.a, q_fb, "cache-fallback")
    finally:
        simulator.configure(fault_models=None, error_503_rate=0.0)
    before = calls(simulator, CACHE_MODEL)
    after_fb = f.ask(f.a, q_fb, "cache-after-fallback")
    n = calls(simulator, CACHE_MODEL) - before
    record("fallback_then", [fb.short(), f"{after_fb.short()}, X-Cache {xcache(after_fb)}, {CACHE_MODEL} 호출 {n}번"])
    if after_fb.status != 200 or xcache(after_fb) == "hit" or n < 1:
        fail(expected="Fallback 모델의 답은 캐시하지 않음: 주 모델이 돌아온 뒤 같은 질문은 X-Cache: miss, 주 모델 호출",
             measured=f"주 모델 다운 중 {fb.short()} (fallback={body_field(fb, 'fallback')!r}); "
                      f"그 뒤 {after_fb.short()}, X-Cache {xcache(after_fb)}, {CACHE_MODEL} 호출 {n}번",
             hint="lesson.ipynb §11 '응답 캐시와 요청 합치기' — 캐시에는 주 모델이 낸 정상 답만 넣으세요. Fallback 의 "
                  "답(품질이 낮을 수 있음)을 넣으면 주 모델이 돌아와도 TTL 동안 그 답이 나갑니다.")

    # 8) 요청 합치기: 업스트림이 느릴 때(첫 토큰 0.5초) 같은 질문 100개가 동시에 -> 업스트림 호출 1번.
    q_co = "API 키를 잃어버렸어요. 어떻게 하나요?"
    simulator.configure(slow_first_token_seconds=COALESCE_DELAY)
    try:
        before = calls(simulator)
        started = time.monotonic()
        burst = osup.same_burst(f.a.base_url, SERVICE_KEY, q_co, COALESCE_N, timeout=DEADLINE + 5)
        took = time.monotonic() - started
        n = calls(simulator) - before
    finally:
        simulator.configure(slow_first_token_seconds=0.0)
    seen = {}
    for r in burst:
        seen[f"{r.status} {xcache(r)}"] = seen.get(f"{r.status} {xcache(r)}", 0) + 1
    texts = {answer_text(r) for r in burst if r.status == 200}
    record("coalesce", seen)
    record("coalesce_upstream_calls", n)
    record("coalesce_seconds", round(took, 2))
    if any(r.status != 200 for r in burst) or len(texts) != 1:
        fail(expected=f"같은 질문 {COALESCE_N}개가 동시에: 모두 200, 모두 같은 답",
             measured=f"응답 {seen}, 서로 다른 답 {len(texts)}개")
    misses = sum(1 for r in burst if xcache(r) == "miss")
    if n != 1 or misses != 1 or any(xcache(r) not in ("miss", "coalesced", "hit") for r in burst):
        fail(expected=f"업스트림 첫 토큰이 {COALESCE_DELAY}초 걸릴 때 같은 질문 {COALESCE_N}개가 동시에 오면 업스트림 "
                      "호출 1번 (X-Cache: miss 1개, 나머지는 coalesced)",
             measured=f"업스트림 호출 {n}번, 응답 {seen}",
             hint="lesson.ipynb §11 '응답 캐시와 요청 합치기' — 캐시에 아직 없는 질문이라도 같은 키의 업스트림 호출이 "
                  "진행 중이면 새로 부르지 말고 그 asyncio.Task 를 asyncio.shield 로 함께 기다리세요 (X-Cache: coalesced).")
    flag = [r for r in burst if xcache(r) != "miss" and body_field(r, "cached") is not True]
    if flag:
        fail(expected="합쳐진(coalesced) 응답도 본문에 \"cached\": true",
             measured=f"{len(flag)}개가 cached={body_field(flag[0], 'cached')!r}")

    # 9) TTL: 처음 넣은 뒤 CACHE_TTL_SECONDS + 0.5초가 지나면 다시 miss, 업스트림 호출.
    time.sleep(max(0.0, set_at + CACHE_TTL + 0.5 - time.monotonic()))
    before = calls(simulator, CACHE_MODEL)
    expired = f.ask(f.a, Q1, "cache-expired")
    n = calls(simulator, CACHE_MODEL) - before
    record("after_ttl", f"{expired.short()}, X-Cache {xcache(expired)}, 호출 {n}번")
    if expired.status != 200 or xcache(expired) != "miss" or n != 1:
        fail(expected=f"CACHE_TTL_SECONDS={CACHE_TTL:g} 가 지나면(+0.5초) 같은 질문은 다시 X-Cache: miss, 업스트림 호출 1번",
             measured=f"{expired.short()}, X-Cache {xcache(expired)}, 업스트림 호출 {n}번",
             hint="lesson.ipynb §11 '응답 캐시와 요청 합치기' — Redis 에는 SET 키 값 EX CACHE_TTL_SECONDS 로 넣으세요 "
                  "(만료 없이 넣으면 모델이나 문서가 바뀌어도 옛 답이 영원히 나갑니다).")

    # 10) 적중률을 볼 수 있는 메트릭: llm_cache_requests_total{result}.
    text = f.client.get(f"{f.a.base_url}/metrics", timeout=5).text
    by_result: dict[str, float] = {}
    for labels, value in osup.metric_samples(text, "llm_cache_requests_total"):
        by_result[labels.get("result", "")] = by_result.get(labels.get("result", ""), 0.0) + value
    record("llm_cache_requests_total", by_result)
    want_hits = sum(1 for r in hits + [variant, third] if xcache(r) == "hit")
    if by_result.get("hit", 0) < want_hits or by_result.get("miss", 0) < 1:
        fail(expected=f"/metrics 의 llm_cache_requests_total{{result=\"hit\"}} >= 서비스 A 의 적중 {want_hits}번, "
                      "result=\"miss\" >= 1",
             measured=f"{by_result or '시계열 없음'}",
             hint="lesson.ipynb §11 '응답 캐시와 요청 합치기' — 요청마다 llm_cache_requests_total{result=hit|miss|"
                  "coalesced|error} 를 1 올리세요: 적중률 = hit / 전체.")

    # 11) Redis 가 꺼져도 캐시는 miss 로 fail open (5xx 없음).
    f.redis.stop()
    down = f.ask(f.a, "환불 정책이 어떻게 되나요?", "cache-redis-down")
    record("redis_down", down.short())
    if down.status != 200 or down.seconds > DEADLINE + SLACK:
        fail(expected=f"캐시의 Redis 가 꺼져도 {DEADLINE}+{SLACK}초 안에 200 (캐시는 miss 로 fail open)",
             measured=down.short())


# =========================================================================== streaming (part 2)
STREAM_Q = "하늘클라우드 요금제는 어떻게 되나요?"
CHUNK_DELAY = 0.25                       # 시뮬레이터 slow_stream_chunk_seconds (조각 사이)
TTFT_SHARE = 0.30


@pytest.fixture(scope="module")
def stream_service(step_dir, tmp_path_factory, simulator):
    yield from single(step_dir, tmp_path_factory, simulator, "스트리밍 검사용", FALLBACK_MODEL="",
                      CACHE_TTL_SECONDS="0")


def streams_of(sim) -> dict[str, int]:
    return dict(sim.stats().get("streams") or {})


@check("step06.streaming")
def test_streaming(stream_service, simulator):
    s = stream_service

    def stream(message: str, tag: str, **kw) -> osup.Stream:
        return osup.stream_chat(s.client, s.svc.base_url, SERVICE_KEY, message, timeout=DEADLINE + 3,
                                rid=rid(tag), **kw)

    # 1) 싼 확인: text/event-stream 으로 delta 이벤트들, 끝은 done.
    first = stream(STREAM_Q, "stream")
    record("first", first.short())
    if first.status != 200 or not first.content_type.startswith("text/event-stream"):
        fail(expected="POST /chat/stream -> 200, Content-Type: text/event-stream", measured=first.short())
    if not first.deltas or first.end != "done":
        fail(expected="event: delta 가 하나 이상, 마지막은 event: done", measured=first.short())
    bad = [e.data for e in first.deltas if not (isinstance(e.data, dict) and isinstance(e.data.get("text"), str))]
    if bad:
        fail(expected="delta 이벤트의 data 는 JSON {\"text\": \"<조각>\"}", measured=f"{str(bad[0])[:120]}")
    done = first.named("done")[-1].data
    usage = done.get("usage") if isinstance(done, dict) else None
    problems = []
    if not isinstance(done, dict) or not isinstance(done.get("response_id"), str) or not done.get("response_id"):
        problems.append(f"response_id 없음 ({str(done)[:120]})")
    if not isinstance(usage, dict) or not all(isinstance(usage.get(k), int) and usage[k] > 0
                                             for k in ("input_tokens", "output_tokens", "total_tokens")):
        problems.append(f"usage={usage!r}")
    if isinstance(done, dict) and (done.get("model") != PRIMARY or done.get("prompt_version") in (None, "")):
        problems.append(f"model={done.get('model')!r}, prompt_version={done.get('prompt_version')!r}")
    if problems:
        fail(expected="event: done 의 data 에 response_id, model, prompt_version, usage(input_tokens, output_tokens, "
                      "total_tokens: 마지막 조각의 usage_metadata)", measured="; ".join(problems))

    # 2) 조각을 이으면 /chat 의 답과 같음 (시뮬레이터는 질문마다 같은 답).
    whole = osup.chat(s.client, s.svc.base_url, SERVICE_KEY, STREAM_Q, timeout=DEADLINE + 2, rid=rid("stream-chat"))
    record("deltas", len(first.deltas))
    if whole.status != 200 or (answer_text(whole) or "").strip() != first.text.strip():
        fail(expected="delta 조각을 이은 글 == 같은 질문의 /chat 답",
             measured=f"/chat {whole.short()}: {str(answer_text(whole))[:60]!r}…; 스트림: {first.text[:60]!r}… "
                      f"(길이 {len(answer_text(whole) or '')} 대 {len(first.text)})")

    # 3) 조각이 느리게 올 때: 첫 delta 가 done 까지 걸린 시간의 30 % 안에 (모아서 보내지 않음).
    simulator.configure(slow_stream_chunk_seconds=CHUNK_DELAY)
    try:
        slow = stream(STREAM_Q, "stream-slow")
    finally:
        simulator.configure(slow_stream_chunk_seconds=0.0)
    t_first = slow.first_delta_at()
    t_done = slow.named("done")[-1].at if slow.named("done") else None
    record("slow", slow.short())
    record("ttft_s", None if t_first is None else round(t_first, 3))
    record("done_s", None if t_done is None else round(t_done, 3))
    if t_first is None or t_done is None:
        fail(expected="조각 사이가 느려도 delta 들과 done", measured=slow.short())
    if t_first >= TTFT_SHARE * t_done:
        fail(expected=f"업스트림 조각이 {CHUNK_DELAY}초 간격으로 올 때 첫 delta 가 done 까지 시간의 "
                      f"{TTFT_SHARE:.0%} 안에 (오는 대로 보냄)",
             measured=f"첫 delta {t_first:.2f}초, done {t_done:.2f}초 ({t_first / t_done:.0%}), delta {len(slow.deltas)}개",
             hint="lesson.ipynb §12 '스트리밍' — ainvoke 로 답을 다 받은 뒤 보내면 첫 글자가 전체 시간만큼 늦습니다. "
                  "llm.astream(...) 의 조각마다 바로 ServerSentEvent(event=\"delta\") 를 yield 하세요.")

    # 4) 업스트림 스트림이 중간에 끊김: event: error 로 끝남 (done 도 아니고, 말없이 끝나지도 않음).
    simulator.configure(stream_cut_rate=1.0)
    try:
        cut = stream(STREAM_Q, "stream-cut")
    finally:
        simulator.configure(stream_cut_rate=0.0)
    record("cut", cut.short())
    err = cut.named("error")
    ok_shape = bool(err) and osup.documented_error(err[-1].data)
    if cut.status != 200 or cut.end != "error" or cut.named("done") or not ok_shape:
        fail(expected="업스트림 스트림이 답 중간에 끊기면 마지막 이벤트는 event: error, data {\"error\": {\"code\", "
                      "\"message\"}} (예: upstream_malformed), done 없음",
             measured=cut.short() + (f", error data {str(err[-1].data)[:120]}" if err and not ok_shape else ""),
             hint="lesson.ipynb §12 '스트리밍' — 제너레이터 안에서 astream 의 예외를 잡아 "
                  "ServerSentEvent(event=\"error\", data={\"error\": {...}}) 를 보내고 끝내세요. 말없이 끝나면 "
                  "클라이언트는 답이 잘린 줄 모릅니다.")

    # 5) 클라이언트가 첫 delta 뒤에 떠나면 업스트림 스트림도 닫힘 (시뮬레이터의 streams.abandoned).
    simulator.configure(slow_stream_chunk_seconds=CHUNK_DELAY)
    try:
        before = streams_of(simulator)
        if "abandoned" not in before:
            pytest.fail("시뮬레이터의 /_sim/stats 에 streams 집계가 없습니다 (채점기 키트 문제)")
        with httpx.Client() as own:
            left = osup.stream_chat(own, s.svc.base_url, SERVICE_KEY, STREAM_Q, timeout=DEADLINE + 3,
                                    rid=rid("stream-leave"), leave_after_first_delta=True)
        left_at = time.monotonic()
        harness.wait_until(lambda: streams_of(simulator).get("abandoned", 0) > before.get("abandoned", 0), 2.0)
        waited = time.monotonic() - left_at
        now = streams_of(simulator)
    finally:
        simulator.configure(slow_stream_chunk_seconds=0.0)
    abandoned = now.get("abandoned", 0) - before.get("abandoned", 0)
    completed = now.get("completed", 0) - before.get("completed", 0)
    record("leave", {"stream": left.short(), "abandoned": abandoned, "completed": completed,
                     "seconds": round(waited, 2)})
    if not left.left:
        fail(expected="느린 스트림에서 첫 delta 를 받음", measured=left.short())
    if abandoned != 1 or completed != 0:
        fail(expected="클라이언트가 첫 delta 뒤에 연결을 끊으면 2초 안에 업스트림 스트림도 닫힘 (시뮬레이터 "
                      "streams.abandoned +1, completed +0)",
             measured=f"2초 동안 abandoned +{abandoned}, completed +{completed}",
             hint="lesson.ipynb §12 '스트리밍' — 클라이언트가 떠나면 FastAPI 가 제너레이터를 취소합니다. "
                  "astream 을 그 제너레이터 안에서 직접 읽고(백그라운드 작업에 넘기지 말고) 취소를 삼키지 마세요.")


# =========================================================================== batching (part 2b)
BATCH_CONCURRENCY = 3                    # BATCH_CONCURRENCY (기본 4)
BATCH_MAX_ITEMS = 10                     # BATCH_MAX_ITEMS (기본 16)
BATCH_DELAY = 0.3                        # 시뮬레이터 slow_first_token_seconds: 항목들이 업스트림에서 겹치는 시간
BATCH_QUESTIONS = [                      # 서로 다른 질문 9개 (시뮬레이터의 답도 모두 다름)
    "하늘클라우드에 어떻게 가입하나요?", "비밀번호를 잊어버렸어요", "2단계 인증을 켜고 싶어요",
    "무료 크레딧은 얼마나 주나요?", "토큰당 가격은 얼마인가요?", "세금계산서 발행이 되나요?",
    "서울 리전이 있나요?", "SLA 는 어떻게 되나요?", "429 에러가 나요",
]
BATCH_FIELDS = ("ok", "response", "model", "prompt_version", "usage", "response_id", "fallback", "cached", "truncated")


@pytest.fixture(scope="module")
def batch_service(step_dir, tmp_path_factory, simulator):
    yield from single(step_dir, tmp_path_factory, simulator, "배치 검사용", CACHE_TTL_SECONDS="0",
                      BATCH_CONCURRENCY=str(BATCH_CONCURRENCY), BATCH_MAX_ITEMS=str(BATCH_MAX_ITEMS))


def upstream_calls(sim) -> int:
    """generateContent + streamGenerateContent calls the simulator received since its last reset."""
    by_action = sim.stats().get("by_action") or {}
    return int(by_action.get("generateContent", 0)) + int(by_action.get("streamGenerateContent", 0))


def short_items(results: list) -> str:
    seen: dict[str, int] = {}
    for item in results:
        seen[osup.item_short(item)] = seen.get(osup.item_short(item), 0) + 1
    return ", ".join(f"{k} {v}개" for k, v in seen.items()) or "결과 없음"


@check("step06.batching")
def test_batching(batch_service, simulator):
    s = batch_service
    timeout = -(-len(BATCH_QUESTIONS) // BATCH_CONCURRENCY) * DEADLINE + 3   # 항목마다 데드라인, ceil(N/C) 번

    def send(messages, tag: str) -> osup.Reply:
        return osup.batch(s.client, s.svc.base_url, SERVICE_KEY, messages, timeout=timeout, rid=rid(tag))

    # 1) 싼 확인이자 본 측정: 서로 다른 질문 9개를 한 배치로. 업스트림 첫 토큰이 0.3초 걸리게 해서 항목들이 겹치게
    #    하고, 시뮬레이터의 동시 요청 최고치(max_in_flight, 직전에 0 으로)로 BATCH_CONCURRENCY 를 잽니다.
    simulator.reset()
    simulator.configure(slow_first_token_seconds=BATCH_DELAY)
    try:
        first = send(BATCH_QUESTIONS, "batch")
        stats = simulator.stats()
    finally:
        simulator.configure(slow_first_token_seconds=0.0)
    peak = int(stats.get("max_in_flight", 0))
    calls_9 = int((stats.get("by_action") or {}).get("generateContent", 0)) + int(
        (stats.get("by_action") or {}).get("streamGenerateContent", 0))
    results = osup.batch_results(first)
    record("batch", first.short())
    record("batch_seconds", round(first.seconds, 2))
    record("upstream_calls", calls_9)
    record("max_in_flight", peak)
    n = len(BATCH_QUESTIONS)
    if first.status != 200 or results is None:
        fail(expected=f"POST /chat/batch {{\"messages\": [질문 {n}개]}} -> 200 {{\"results\": [...]}}",
             measured=first.short() if first.status != 200 else f"HTTP 200 이지만 results 목록이 없음: "
                      f"{json.dumps(first.body, ensure_ascii=False)[:160] if first.body is not None else '(JSON 아님)'}")
    if len(results) != n:
        fail(expected=f"질문 {n}개 -> results {n}개 (messages 와 같은 순서)", measured=f"results {len(results)}개")
    not_ok = [f"{i + 1}번 {osup.item_short(r)}" for i, r in enumerate(results) if osup.item_short(r) != "ok"]
    if not_ok:
        fail(expected=f"장애가 없을 때 결과 {n}개가 모두 {{\"ok\": true, \"response\", ...}}",
             measured=f"{short_items(results)} ({', '.join(not_ok[:3])})")
    missing = sorted({k for r in results for k in BATCH_FIELDS if k not in r})
    if missing:
        fail(expected=f"성공한 항목마다 /chat 의 응답 필드와 ok: {', '.join(BATCH_FIELDS)}",
             measured=f"없는 필드: {', '.join(missing)}")
    ids = {r.get("response_id") for r in results if isinstance(r.get("response_id"), str) and r.get("response_id")}
    bad_model = [r.get("model") for r in results if r.get("model") != PRIMARY]
    if len(ids) != n or bad_model:
        fail(expected=f"항목마다 다른 response_id (피드백은 답 하나에 한 번), model={PRIMARY!r}",
             measured=f"서로 다른 response_id {len(ids)}개" + (f", model {bad_model[0]!r}" if bad_model else ""))
    if calls_9 != n:
        fail(expected=f"CACHE_TTL_SECONDS=0 에서 질문 {n}개의 배치 -> 업스트림 호출 정확히 {n}번 (항목마다 한 번)",
             measured=f"업스트림 호출 {calls_9}번")
    if peak > BATCH_CONCURRENCY:
        fail(expected=f"BATCH_CONCURRENCY={BATCH_CONCURRENCY}: 업스트림에 동시에 {BATCH_CONCURRENCY}개 이하",
             measured=f"시뮬레이터가 본 동시 요청 최고 {peak}개 (질문 {n}개, {first.seconds:.2f}초)",
             hint="lesson.ipynb §13 '배치 처리' — asyncio.gather 로 모든 항목을 한꺼번에 보내면 배치 하나가 업스트림의 "
                  "한도를 다 씁니다. RunnableLambda(...).abatch(항목들, config={\"max_concurrency\": BATCH_CONCURRENCY}) "
                  "로 동시에 보낼 수를 제한하세요.")
    if peak < 2:
        fail(expected=f"항목들을 동시에 처리: 업스트림에 동시에 2개 이상 ({BATCH_CONCURRENCY}개까지)",
             measured=f"동시 요청 최고 {peak}개: 하나씩 차례로 ({first.seconds:.2f}초, 업스트림 첫 토큰 {BATCH_DELAY}초)",
             hint="lesson.ipynb §13 '배치 처리' — 항목을 for 문으로 하나씩 기다리면 배치가 N 배 느립니다. "
                  "abatch(..., config={\"max_concurrency\": BATCH_CONCURRENCY}) 로 C 개씩 함께 보내세요.")

    # 2) 순서와 내용: 각 항목의 답 == 그 질문을 /chat 으로 물은 답 (시뮬레이터는 질문마다 같은 답).
    singles = [osup.chat(s.client, s.svc.base_url, SERVICE_KEY, q, timeout=DEADLINE + 2, rid=rid("batch-chat"))
               for q in BATCH_QUESTIONS]
    answers = [answer_text(r) for r in singles]
    wrong = [i for i in range(n) if results[i].get("response") != answers[i]]
    record("order_mismatches", len(wrong))
    if any(r.status != 200 for r in singles):
        fail(expected="같은 질문들을 /chat 으로 하나씩 물으면 200", measured=str(osup.count_by(singles)))
    if wrong:
        i = wrong[0]
        elsewhere = [j + 1 for j in range(n) if answers[j] == results[i].get("response")]
        fail(expected="results[i] 의 response == messages[i] 를 /chat 으로 물은 답 (같은 순서)",
             measured=f"{len(wrong)}개가 다름: {i + 1}번 질문 {BATCH_QUESTIONS[i]!r} 의 결과 "
                      f"{str(results[i].get('response'))[:40]!r}…"
                      + (f" (= {elsewhere[0]}번 질문의 답: 순서가 바뀜)" if elsewhere else ""))

    # 3) 검증: 항목이 BATCH_MAX_ITEMS 보다 많거나, 빈(공백뿐인) 항목이 있거나, 빈 목록 -> 422, 업스트림 호출 없음.
    before = upstream_calls(simulator)
    too_many = [f"질문 {i}" for i in range(BATCH_MAX_ITEMS + 1)]
    cases = [(f"항목 {BATCH_MAX_ITEMS + 1}개", too_many), ("공백뿐인 항목 \"   \"", [BATCH_QUESTIONS[0], "   "]),
             ("빈 목록 []", [])]
    seen, bad = {}, []
    for name, messages in cases:
        r = send(messages, "batch-invalid")
        seen[name] = f"HTTP {r.status}"
        if r.status != 422 or not (osup.documented_error(r.body) or isinstance(body_field(r, "detail"), list)):
            bad.append(f"{name}: {r.short()}")
    sent_upstream = upstream_calls(simulator) - before
    record("invalid", seen)
    if bad:
        fail(expected=f"BATCH_MAX_ITEMS={BATCH_MAX_ITEMS} 를 넘는 항목, 공백뿐인 항목, 빈 목록은 배치 전체가 422 "
                      "(FastAPI 의 검증 오류 JSON {\"detail\": [...]}, /chat 과 같음)",
             measured="; ".join(bad),
             hint="lesson.ipynb §13 '배치 처리' — BatchRequest 의 messages 에 min_length=1 과 max_length="
                  "BATCH_MAX_ITEMS 를 걸고, 각 항목은 ChatRequest.message 처럼 검증하세요 (1..MAX_MESSAGE_CHARS, "
                  "공백뿐이면 안 됨). 검증은 업스트림에 보내기 전에 합니다.")
    if sent_upstream:
        fail(expected="검증에 걸린 배치는 업스트림에 아무것도 보내지 않음",
             measured=f"422 배치 세 개 동안 업스트림 호출 {sent_upstream}번")

    # 4) 항목의 실패는 그 자리에: 모든 답이 SAFETY 로 막히면 200, 결과 3개가 모두 ok=false content_blocked.
    simulator.configure(safety_block_rate=1.0)
    try:
        blocked_all = send(BATCH_QUESTIONS[:3], "batch-blocked")
    finally:
        simulator.configure(safety_block_rate=0.0)
    got = osup.batch_results(blocked_all) or []
    record("all_blocked", f"{blocked_all.short()}: {short_items(got)}")
    if blocked_all.status != 200 or len(got) != 3 or any(osup.item_short(r) != "오류 content_blocked" for r in got):
        fail(expected="안전 필터가 모든 답을 막아도 배치는 200, results 3개가 각각 "
                      "{\"ok\": false, \"error\": {\"code\": \"content_blocked\", \"message\"}} (5xx 나 배치 전체의 오류가 아님)",
             measured=f"{blocked_all.short()}, 결과: {short_items(got)}",
             hint="lesson.ipynb §13 '배치 처리' — abatch(..., return_exceptions=True) 로 항목의 예외를 결과로 받고, "
                  "예외마다 /chat 과 같은 오류 코드를 {\"ok\": false, \"error\": {...}} 로 그 자리에 두세요. 항목 하나의 "
                  "실패가 배치 전체를 실패시키면 나머지 답까지 버려집니다.")
    bad_shape = [r for r in got if not osup.documented_error(r)]
    if bad_shape:
        fail(expected="실패한 항목의 error 에 code 와 message (문자열)",
             measured=json.dumps(bad_shape[0], ensure_ascii=False)[:160])

    # 5) 섞인 배치: 답의 절반쯤이 막힐 때, 막힌 항목만 오류이고 나머지는 제자리에서 그 질문의 답.
    simulator.reset()
    simulator.configure(safety_block_rate=0.5)
    try:
        mixed = send(BATCH_QUESTIONS[:6], "batch-mixed")
        blocked_n = int((simulator.stats().get("faults") or {}).get("safety_block", 0))
    finally:
        simulator.configure(safety_block_rate=0.0)
    got = osup.batch_results(mixed) or []
    record("mixed", f"{mixed.short()}: {short_items(got)}, 시뮬레이터가 막은 답 {blocked_n}개")
    if not 0 < blocked_n < 6:
        pytest.fail(f"채점기 문제: 섞인 배치에서 시뮬레이터가 막은 답이 {blocked_n}개 (1~5 여야 함)")
    problems = []
    if mixed.status != 200 or len(got) != 6:
        problems.append(f"{mixed.short()}, 결과 {len(got)}개")
    else:
        errors = [i for i, r in enumerate(got) if osup.item_short(r) == "오류 content_blocked"]
        oks = [i for i, r in enumerate(got) if osup.item_short(r) == "ok"]
        if len(errors) != blocked_n or len(oks) != 6 - len(errors):
            problems.append(f"결과 {short_items(got)} (시뮬레이터가 막은 답 {blocked_n}개)")
        moved = [i + 1 for i in oks if got[i].get("response") != answers[i]]
        if moved:
            problems.append(f"성공한 항목 {moved} 의 답이 그 자리 질문의 답이 아님")
    if problems:
        fail(expected="질문 6개 중 일부만 막히면 200, 막힌 항목만 ok=false content_blocked 이고 나머지는 제자리에서 "
                      "그 질문의 답",
             measured="; ".join(problems))


# =========================================================================== token budget (part 2b)
BUDGET_MODEL = "gemini-3.5-flash-thinking"   # 사고 토큰을 쓰는 모델: THINKING_BUDGET=0 이 전달되지 않으면 드러남
MAX_OUTPUT = 40                              # MAX_OUTPUT_TOKENS (기본 1024)
BUDGET_TTL = 3.0                             # CACHE_TTL_SECONDS: 잘린 답이 캐시되는지 보려고 캐시를 켬
Q_LONG = "요금제는 어떻게 되나요?"            # 보통 답이 40 토큰보다 긺 (상한에서 잘림)
Q_SHORT = "무료 크레딧은 얼마나 주나요?"       # 답이 40 토큰보다 짧음 (잘리지 않음, 캐시됨)
Q_FALLBACK = "스트리밍 응답을 지원하나요?"     # Fallback 모델의 보통 답도 40 토큰보다 긺


@pytest.fixture(scope="module")
def budget_service(step_dir, tmp_path_factory, simulator):
    yield from single(step_dir, tmp_path_factory, simulator, "토큰 예산 검사용", LLM_MODEL=BUDGET_MODEL,
                      MAX_OUTPUT_TOKENS=str(MAX_OUTPUT), THINKING_BUDGET="0", CACHE_TTL_SECONDS=f"{BUDGET_TTL:g}")


def scrape_text(s: Single) -> str:
    try:
        r = s.client.get(f"{s.svc.base_url}/metrics", timeout=5)
    except httpx.HTTPError as exc:
        fail(expected="GET /metrics 응답", measured=f"{type(exc).__name__}: {exc}"[:160])
    if r.status_code != 200:
        fail(expected="GET /metrics -> 200 (Prometheus 텍스트)", measured=f"HTTP {r.status_code}")
    return r.text


def usage_of(r: osup.Reply) -> dict:
    u = body_field(r, "usage")
    return u if isinstance(u, dict) else {}


def sim_row(rows: list[dict]) -> str:
    if not rows:
        return "시뮬레이터가 답한 호출 없음"
    r = rows[-1]
    return (f"시뮬레이터: finish_reason {r.get('finish_reason')}, 출력 토큰 {r.get('output_tokens')}, "
            f"사고 토큰 {r.get('thoughts_tokens')}")


@check("step06.token_budget")
def test_token_budget(budget_service, simulator):
    from coursekit.simulator.models import price_for

    s = budget_service

    def ask(message: str, tag: str) -> tuple[osup.Reply, list[dict]]:
        seq = osup.last_seq(simulator)
        r = osup.chat(s.client, s.svc.base_url, SERVICE_KEY, message, timeout=DEADLINE + 2, rid=rid(tag))
        return r, [row for row in osup.rows_since(simulator, seq) if row.get("model") == BUDGET_MODEL]

    metrics_before = scrape_text(s)
    calls: list[dict] = []          # 이 검사 동안 시뮬레이터가 답한 호출 (비용 비교용)

    # 1) 싼 확인: 보통 답이 긴 질문 -> 업스트림이 MAX_OUTPUT_TOKENS 에서 멈추고, 응답에 truncated=true.
    long1, rows = ask(Q_LONG, "budget-long")
    calls += rows
    record("long", f"{long1.short()}, truncated={body_field(long1, 'truncated')!r}, usage={usage_of(long1)}; "
                   f"{sim_row(rows)}")
    if long1.status != 200:
        fail(expected=f"MAX_OUTPUT_TOKENS={MAX_OUTPUT}, THINKING_BUDGET=0 인 서비스에 질문 -> 200", measured=long1.short())
    row = rows[-1] if rows else {}
    if row.get("finish_reason") != "MAX_TOKENS":
        fail(expected=f"MAX_OUTPUT_TOKENS={MAX_OUTPUT} 가 업스트림 호출에 전달됨: 보통 40 토큰이 넘는 답 {Q_LONG!r} 은 "
                      f"업스트림에서 {MAX_OUTPUT} 토큰에서 멈춤 (finish_reason MAX_TOKENS)",
             measured=sim_row(rows),
             hint="lesson.ipynb §14 '토큰 예산' — 설정 MAX_OUTPUT_TOKENS 를 ChatGoogleGenerativeAI(max_output_tokens=...) "
                  "로 주 모델, Fallback, 카나리 클라이언트에 넘기세요. 넘기지 않으면 답의 길이(와 비용)에 상한이 없습니다.")
    if int(row.get("thoughts_tokens") or 0) != 0:
        fail(expected="THINKING_BUDGET=0 이 업스트림 호출에 전달됨: 사고 모델의 사고 토큰 0개",
             measured=sim_row(rows),
             hint="lesson.ipynb §14 '토큰 예산' — 설정 THINKING_BUDGET 을 ChatGoogleGenerativeAI(thinking_budget=...) 로 "
                  "넘기세요 (0 = 사고 토큰 없음). 사고 토큰은 출력 단가로 과금되고 max_output_tokens 와 따로 셉니다.")
    if body_field(long1, "truncated") is not True:
        fail(expected="상한에서 잘린 답 (finish_reason MAX_TOKENS) 의 응답 본문에 \"truncated\": true",
             measured=f"truncated={body_field(long1, 'truncated')!r} ({sim_row(rows)})",
             hint="lesson.ipynb §14 '토큰 예산' — 답의 response_metadata[\"finish_reason\"] 이 \"MAX_TOKENS\" 면 "
                  "ChatResponse.truncated=True 로 알리세요. 표시가 없으면 클라이언트는 잘린 답을 온전한 답으로 씁니다.")
    out_tokens = usage_of(long1).get("output_tokens")
    want = int(row.get("output_tokens") or 0) + int(row.get("thoughts_tokens") or 0)
    if not isinstance(out_tokens, int) or out_tokens > MAX_OUTPUT or out_tokens != want:
        fail(expected=f"잘린 답의 usage.output_tokens <= {MAX_OUTPUT}, 시뮬레이터가 센 출력 토큰({want})과 같음",
             measured=f"usage.output_tokens={out_tokens!r}")

    # 2) 짧은 답은 잘리지 않음: truncated=false. 같은 질문을 한 번 더 -> 캐시 적중 (이 설정에서 캐시가 켜져 있음).
    short1, rows = ask(Q_SHORT, "budget-short")
    calls += rows
    short2, rows2 = ask(Q_SHORT, "budget-short-again")
    calls += rows2
    record("short", f"{short1.short()}, truncated={body_field(short1, 'truncated')!r}, X-Cache {xcache(short1)}; "
                    f"다시: X-Cache {xcache(short2)}, 호출 {len(rows2)}번")
    if short1.status != 200 or body_field(short1, "truncated") is not False:
        fail(expected=f"상한보다 짧은 답 ({Q_SHORT!r}) 은 200, \"truncated\": false",
             measured=f"{short1.short()}, truncated={body_field(short1, 'truncated')!r} ({sim_row(rows)})")
    if short2.status != 200 or xcache(short2) != "hit" or rows2:
        blocked("step06.cache", measured=f"CACHE_TTL_SECONDS={BUDGET_TTL:g} 에서 잘리지 않은 답을 다시 물었더니 "
                                         f"{short2.short()}, X-Cache {xcache(short2)}, 업스트림 호출 {len(rows2)}번")

    # 3) 잘린 답은 캐시하지 않음: 같은 긴 질문을 TTL 안에 다시 -> X-Cache: miss, 업스트림 호출 1번, 다시 truncated.
    long2, rows = ask(Q_LONG, "budget-long-again")
    calls += rows
    record("long_again", f"{long2.short()}, X-Cache {xcache(long2)}, 업스트림 호출 {len(rows)}번, "
                         f"truncated={body_field(long2, 'truncated')!r}")
    if long2.status != 200 or xcache(long2) != "miss" or len(rows) != 1:
        fail(expected=f"잘린 답은 캐시하지 않음: 같은 질문을 CACHE_TTL_SECONDS={BUDGET_TTL:g} 안에 다시 물으면 X-Cache: miss, "
                      "업스트림 호출 1번",
             measured=f"{long2.short()}, X-Cache {xcache(long2)}, 업스트림 호출 {len(rows)}번",
             hint="lesson.ipynb §14 '토큰 예산' — 캐시에 둘 답을 고르는 곳(cacheable)에서 잘린 답(finish_reason "
                  "MAX_TOKENS)을 빼세요. 캐시하면 TTL 동안 모두가 잘린 답을 받습니다.")
    if body_field(long2, "truncated") is not True:
        fail(expected="다시 물은 잘린 답도 \"truncated\": true", measured=f"truncated={body_field(long2, 'truncated')!r}")

    # 4) Fallback 클라이언트에도 상한: 주 모델이 다운(503)이면 Fallback 모델이 답하고, 그 답도 40 토큰에서 잘림.
    seq = osup.last_seq(simulator)
    simulator.configure(fault_models=[BUDGET_MODEL], error_503_rate=1.0)
    try:
        fb = osup.chat(s.client, s.svc.base_url, SERVICE_KEY, Q_FALLBACK, timeout=DEADLINE + 2,
                       rid=rid("budget-fallback"))
    finally:
        simulator.configure(fault_models=None, error_503_rate=0.0)
    rows = [row for row in osup.rows_since(simulator, seq) if row.get("model") == FALLBACK]
    record("fallback", f"{fb.short()}, model={body_field(fb, 'model')!r}, truncated={body_field(fb, 'truncated')!r}; "
                       f"{sim_row(rows)}")
    if fb.status != 200 or body_field(fb, "model") != FALLBACK or not rows:
        blocked("step06.fallback", measured=f"주 모델이 다운(503)일 때 {fb.short()}, model={body_field(fb, 'model')!r} "
                                            f"(기대: Fallback 모델 {FALLBACK} 의 답)")
    if rows[-1].get("finish_reason") != "MAX_TOKENS" or body_field(fb, "truncated") is not True:
        fail(expected=f"Fallback 모델({FALLBACK})의 호출에도 MAX_OUTPUT_TOKENS={MAX_OUTPUT}: 긴 답이 잘리고 "
                      "\"truncated\": true",
             measured=f"truncated={body_field(fb, 'truncated')!r}; {sim_row(rows)}",
             hint="lesson.ipynb §14 '토큰 예산' — 상한은 주 모델만이 아니라 Fallback (과 카나리) 클라이언트에도 "
                  "max_output_tokens=MAX_OUTPUT_TOKENS 로 거세요. 장애 때 비용이 갑자기 늘면 안 됩니다.")

    # 5) 메트릭: 비용 카운터는 실제 토큰 x 가격표만큼, 잘린 답 카운터는 잘린 답 수만큼.
    time.sleep(0.2)
    metrics_after = scrape_text(s)
    price = price_for(BUDGET_MODEL)
    want_cost = sum(int(r.get("input_tokens") or 0) * price.input_usd_per_1m
                    + (int(r.get("output_tokens") or 0) + int(r.get("thoughts_tokens") or 0)) * price.output_usd_per_1m
                    for r in calls) / 1e6
    got_cost = (osup.metric_sum(metrics_after, "llm_cost_usd_total", gen_ai_request_model=BUDGET_MODEL)
                - osup.metric_sum(metrics_before, "llm_cost_usd_total", gen_ai_request_model=BUDGET_MODEL))
    record("cost_usd", {"service": got_cost, "expected": want_cost, "calls": len(calls)})
    if not math.isclose(got_cost, want_cost, rel_tol=1e-6, abs_tol=1e-12):
        tokens = [(r.get("input_tokens"), r.get("output_tokens")) for r in calls]
        fail(expected=f"이 검사의 업스트림 호출 {len(calls)}번 동안 llm_cost_usd_total{{gen_ai_request_model="
                      f"\"{BUDGET_MODEL}\"}} 의 증가량 = (입력 토큰 x {price.input_usd_per_1m:g} + 출력 토큰 x "
                      f"{price.output_usd_per_1m:g}) / 1e6 = {want_cost:.8f} USD (캐시 적중은 0)",
             measured=f"{got_cost:.8f} USD (시뮬레이터의 (입력, 출력) 토큰 {tokens})")
    truncated_n = sum(1 for r in (long1, long2, fb) if body_field(r, "truncated") is True)
    got_trunc = (osup.metric_sum(metrics_after, "llm_truncated_answers_total")
                 - osup.metric_sum(metrics_before, "llm_truncated_answers_total"))
    record("llm_truncated_answers_total", got_trunc)
    if got_trunc != truncated_n:
        fail(expected=f"/metrics 의 llm_truncated_answers_total 이 잘린 답 수({truncated_n})만큼 오름",
             measured=f"{got_trunc:g} 오름",
             hint="lesson.ipynb §14 '토큰 예산' — 잘린 답마다 llm.truncated_answers 카운터(Prometheus "
                  "llm_truncated_answers_total{gen_ai_request_model})를 1 올리세요: 상한이 너무 낮으면 여기서 보입니다.")
