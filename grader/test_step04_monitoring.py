"""Step 04 채점: 모니터링 (Prometheus, Alertmanager, Grafana 대시보드).

학습자의 서비스를 실제 uvicorn 프로세스로 띄우고 (기본값이 아닌 설정: 사고 토큰을 쓰는 모델, 판정 비율 1.0,
드리프트 창 50, 시도 1번), 채점기의 Gemini 시뮬레이터를 뒤에 둡니다. 숫자는 모두 시뮬레이터 자신의 집계와
비교합니다. Prometheus 와 Alertmanager 는 진짜 프로세스이며 학습자의 monitoring/ 설정을 (대상 주소, 수집 주기,
Alertmanager 주소, 웹훅 주소만 바꿔) 그대로 씁니다.
"""

from __future__ import annotations

import math
import re
import secrets
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from coursekit import prometheus as kp
from coursekit.procs import skip_or_fail, tool_path
from coursekit.simulator.models import price_for
from grader import monitoring_support as ms
from grader import harness
from grader.harness import blocked, check, copy_step, fail, record, run_locust, run_service

STEP = "step04"

# 기본값이 아닌 설정 (코드에 값을 박아 둔 서비스는 드러납니다).
MODEL = "gemini-3.5-flash-thinking"   # 사고(thinking) 토큰이 있는 모델: 두 번 세면 드러남
JUDGE_MODEL = "gemini-3.5-flash-judge"
JUDGE_SAMPLE_RATE = "1.0"              # 모든 답을 판정 (기본 0.1)
DRIFT_WINDOW = 50                      # 기본 200
MAX_ATTEMPTS = 1                       # 장애 한 번 = 오류 한 번 (정확한 개수 비교)
SERVICE_KEY = "svc-" + secrets.token_hex(16)
GOOGLE_KEY = "grader-gemini-" + secrets.token_hex(8)
QUESTION = "하늘클라우드 요금제는 어떻게 되나요?"
OFF_TOPIC = "오늘 저녁 메뉴 추천해 줘"   # 지식 베이스 밖: 근거 규칙이 있으면 거절

LOAD_USERS = 16
LOAD_SECONDS = 10
P95_FACTOR = 2.0          # Prometheus p95 와 Locust p95 의 허용 배율 (LLM 버킷 한 칸 = 2배)
FOR_SHORT = "5s"          # 전달 검사에서 LLMHighErrorRate 의 for: 를 줄인 값
DELIVERY_SECONDS = 40     # 장애 주입 뒤 웹훅에 알림이 도착해야 하는 시간
PSI_LOW, PSI_HIGH = 0.1, 0.25

REQUIRED_FAMILIES = {
    # Prometheus 이름 (표본 이름): (타입, 설명)
    "http_server_request_duration_seconds": ("histogram", "HTTP 요청 시간 (FastAPI telemetry)"),
    "gen_ai_client_operation_duration_seconds": ("histogram", "LLM 호출 시간"),
    "gen_ai_client_token_usage": ("histogram", "토큰 수"),
    "llm_cost_usd_total": ("counter", "비용 (USD)"),
    "llm_answers_total": ("counter", "답 수 (refused 라벨)"),
    "llm_feedback_total": ("counter", "피드백 수"),
    "llm_judge_score": ("histogram", "판정 점수"),
    "llm_input_drift_psi": ("gauge", "입력 드리프트 PSI"),
}


# --------------------------------------------------------------------------- fixtures
def service_env(simulator) -> dict[str, str]:
    return {
        "SERVICE_API_KEY": SERVICE_KEY,
        "GOOGLE_API_KEY": GOOGLE_KEY,
        "GOOGLE_GEMINI_BASE_URL": simulator.base_url,
        "LLM_MODEL": MODEL,
        "LLM_TIMEOUT_SECONDS": "10",
        "LLM_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "JUDGE_MODEL": JUDGE_MODEL,
        "JUDGE_SAMPLE_RATE": JUDGE_SAMPLE_RATE,
        "DRIFT_WINDOW": str(DRIFT_WINDOW),
    }


BUDGET_SECONDS = 90


@pytest.fixture(scope="module", autouse=True)
def grading_time(request):
    """Print how long grading step 04 took (DESIGN §8: under 90 s)."""
    with harness.report_grading_time(request, "step04", BUDGET_SECONDS):
        yield


@pytest.fixture(scope="module")
def graded_dir(step_dir, tmp_path_factory):
    return copy_step(step_dir, tmp_path_factory.mktemp("step04"))


@pytest.fixture(scope="module")
def service(graded_dir, simulator):
    """The learner's service; the simulator's counters start at zero with it, so every token,
    every judge call the simulator counts from now on came from this service."""
    simulator.reset(config=True)
    with run_service(graded_dir, env=service_env(simulator), name=f"{graded_dir.name} (모니터링 검사용)") as svc:
        yield svc
    simulator.reset(config=True)


@pytest.fixture
def quiet_sim(simulator):
    """Faults and latency put back after the test."""
    yield simulator
    simulator.configure(latency="zero", error_429_rate=0.0, error_503_rate=0.0, error_500_rate=0.0, hang_rate=0.0,
                        fault_models=None)


def short(r: httpx.Response, n: int = 160) -> str:
    text = r.text.replace("\n", " ")
    return f"HTTP {r.status_code} {text[:n]}{'…' if len(text) > n else ''}"


def post(svc, path: str, payload, key: str | None = SERVICE_KEY, timeout: float = 20.0) -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    try:
        if isinstance(payload, (bytes, str)):
            headers["Content-Type"] = "application/json"
            return httpx.post(f"{svc.base_url}{path}", content=payload, headers=headers, timeout=timeout)
        return httpx.post(f"{svc.base_url}{path}", json=payload, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        fail(expected=f"POST {path} 가 {timeout:.0f}초 안에 응답", measured="응답 없음 (시간 초과)")
    except httpx.TransportError as exc:
        fail(expected=f"POST {path} 에 서비스가 응답", measured=f"연결 오류: {type(exc).__name__}")


def chat(svc, message: str = QUESTION, **extra) -> httpx.Response:
    return post(svc, "/chat", {"message": message, **extra})


def chat_ok(svc, message: str = QUESTION, **extra) -> dict:
    r = chat(svc, message, **extra)
    if r.status_code != 200:
        blocked("step02.contract", measured=f"POST /chat -> {short(r)}")
    try:
        return r.json()
    except ValueError:
        blocked("step02.contract", measured=f"POST /chat -> JSON 이 아닌 응답 {short(r)}")


def scrape(svc, key: str | None = None) -> ms.MetricsPage:
    """GET /metrics (no key) parsed; a failed check when it does not answer a parsable page."""
    headers = {"X-API-Key": key} if key else {}
    try:
        r = httpx.get(f"{svc.base_url}/metrics", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        fail(expected="GET /metrics 응답", measured=type(exc).__name__)
    if r.status_code != 200:
        fail(expected="GET /metrics (X-API-Key 없이) -> 200", measured=short(r))
    try:
        return ms.MetricsPage(r.text)
    except ValueError as exc:  # the parser's own errors: not Prometheus text
        fail(expected="Prometheus 텍스트 형식의 /metrics", measured=f"파싱 실패: {exc}", detail=r.text[:300])


def metrics_or_blocked(svc) -> ms.MetricsPage:
    try:
        r = httpx.get(f"{svc.base_url}/metrics", timeout=10)
        page = ms.MetricsPage(r.text) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        page = None
    if page is None:
        blocked("step04.metrics_endpoint", measured="GET /metrics (X-API-Key 없이) 가 읽을 수 있는 메트릭 페이지를 주지 않음")
    return page


def settle(sim, svc=None, timeout: float = 30.0) -> None:
    """Wait until the simulator has nothing in flight and its request count stands still (the
    judge tasks the service started in the background are done)."""
    deadline = time.monotonic() + timeout
    last, still = None, 0
    while time.monotonic() < deadline:
        s = sim.stats()
        now = (s["requests_total"], s["in_flight"])
        if s["in_flight"] == 0 and now == last:
            still += 1
            if still >= 2:
                return
        else:
            still = 0
        last = now
        time.sleep(0.15)


def model_tokens(sim) -> dict[str, dict[str, int]]:
    """{model: {"input": n, "output": n}} with thinking tokens inside output (as usage_metadata)."""
    out = {}
    for model, t in sim.stats().get("tokens_by_model", {}).items():
        out[model] = {"input": t["input"], "output": t["output"] + t.get("thoughts", 0), "thoughts": t.get("thoughts", 0)}
    return out


# --------------------------------------------------------------------------- metrics endpoint
@check("step04.metrics_endpoint")
def test_metrics_endpoint(service, simulator):
    # OpenTelemetry 의 계측기는 처음 기록된 뒤에야 나타납니다: 답 하나 (판정 포함) 와 피드백 하나를 먼저 보냅니다.
    body = chat_ok(service)
    fb = post(service, "/feedback", {"response_id": str(body.get("response_id")), "rating": "up"})
    settle(simulator)
    try:
        r = httpx.get(f"{service.base_url}/metrics", timeout=10)
    except httpx.HTTPError as exc:
        fail(expected="GET /metrics 응답", measured=type(exc).__name__)
    record("status", r.status_code)
    if r.status_code != 200:
        fail(expected="GET /metrics 는 X-API-Key 없이 200 (Prometheus 는 키를 보내지 않음)", measured=short(r))
    ctype = r.headers.get("content-type", "")
    if not ctype.startswith("text/plain"):
        fail(expected="Content-Type: text/plain; version=0.0.4 (prometheus_client 의 형식)", measured=ctype or "없음")
    page = scrape(service)
    leaked = [name for name, secret in (("SERVICE_API_KEY", SERVICE_KEY), ("GOOGLE_API_KEY", GOOGLE_KEY))
              if secret in page.text]
    if leaked:
        fail(expected="/metrics 에 비밀 값이 없음", measured="보인 값: " + ", ".join(leaked))
    problems = []
    for name, (kind, what) in REQUIRED_FAMILIES.items():
        sample = name + ("_count" if kind == "histogram" else "")
        got = page.type_of(sample)
        if got is None:
            near = sorted({s.name for f in page.families.values() for s in f.samples
                           if s.name.startswith(name.split("_total")[0].rsplit("_", 1)[0])})[:4]
            problems.append(f"{name} ({what}, {kind}) 없음" + (f" — 비슷한 이름: {', '.join(near)}" if near else ""))
        elif got != kind:
            problems.append(f"{name} 의 타입이 {got} ({kind} 이어야 함)")
    record("families", len(page.families))
    # 기본 단위 (초, 바이트): 밀리초 메트릭은 초 메트릭과 섞이면 1000배 틀립니다.
    units = sorted({s.name for f in page.families.values() for s in f.samples
                    if re.search(r"_(milliseconds|millis|ms|microseconds|minutes|hours)(_|$)", s.name)})
    if units:
        problems.append(f"기본 단위가 아닌 이름: {', '.join(units[:4])} (시간은 초 단위 _seconds)")
    if problems:
        fail(expected="계약의 메트릭 이름과 타입 (카운터는 _total, 시간은 _seconds)", measured="; ".join(problems),
             detail=None if fb.status_code == 200 else f"(피드백 POST /feedback -> {short(fb, 100)})")
    # /metrics 자신은 HTTP 메트릭에 세지 않음 (수집할 때마다 트래픽이 늘어 보이면 안 됨)
    routes = set(page.by("http_server_request_duration_seconds_count", "http_route"))
    record("routes", sorted(routes))
    if "/metrics" in routes:
        fail(expected="GET /metrics 요청은 http_server_request_duration_seconds 에 세지 않음 (exclude)",
             measured=f"http_route 값: {', '.join(sorted(routes))}")
    if "/chat" not in routes:
        fail(expected="POST /chat 요청이 http_server_request_duration_seconds{http_route=\"/chat\"} 에 기록됨",
             measured=f"http_route 값: {', '.join(sorted(routes)) or '없음'}")


@check("step04.buckets")
def test_buckets(service, simulator):
    chat_ok(service)
    page = metrics_or_blocked(service)
    problems, seen = [], {}
    for name in ("http_server_request_duration_seconds", "gen_ai_client_operation_duration_seconds"):
        bounds = page.bucket_bounds(name)
        seen[name] = bounds
        if not bounds:
            problems.append(f"{name}: 버킷 없음")
            continue
        inside = [b for b in bounds if 0.05 <= b <= 10]
        why = []
        if bounds[-1] < 60:
            why.append(f"가장 큰 버킷 {bounds[-1]:g}초 (60초 이상이어야 함)")
        positive = [b for b in bounds if b > 0]
        if not positive or positive[0] > 0.05:
            why.append(f"0 보다 큰 가장 작은 버킷 {positive[0] if positive else 0:g}초 (0.05초 이하여야 함)")
        if len(inside) < 6:
            why.append(f"0.05~10초 사이 버킷 {len(inside)}개 (6개 이상이어야 p95 를 가를 수 있음)")
        if why:
            problems.append(f"{name}: " + ", ".join(why) + f" — 버킷: {', '.join(f'{b:g}' for b in bounds)}")
    record("bounds", {k: [f"{b:g}" for b in v] for k, v in seen.items()})
    if problems:
        fail(expected="LLM 지연 시간 버킷: 0.05초 이하부터 60초 이상까지, 0.05~10초 사이 6개 이상 (예: 0.01 ~ 81.92 두 배씩)",
             measured="; ".join(problems))


# --------------------------------------------------------------------------- errors by kind
@check("step04.errors")
def test_errors_by_kind(service, quiet_sim):
    sim = quiet_sim
    chat_ok(service)
    settle(sim)
    before = metrics_or_blocked(service)
    n503, n429 = 3, 2
    statuses = []
    sim.configure(error_503_rate=1.0, fault_models=MODEL)
    statuses += [chat(service).status_code for _ in range(n503)]
    sim.configure(error_503_rate=0.0, error_429_rate=1.0)
    statuses += [chat(service).status_code for _ in range(n429)]
    sim.configure(error_429_rate=0.0, fault_models=None)
    settle(sim)
    after = metrics_or_blocked(service)
    record("statuses", statuses)
    op = "gen_ai_client_operation_duration_seconds_count"
    got = {code: after.sum(op, error_type=code) - before.sum(op, error_type=code)
           for code in ("upstream_error", "upstream_rate_limited")}
    record("error_type_delta", got)
    kinds = sorted({s.labels.get("error_type") for s in after.samples(op) if s.labels.get("error_type")})
    expected = {"upstream_error": n503, "upstream_rate_limited": n429}
    if got != expected:
        fail(expected=f"업스트림 503 {n503}번 -> {op}{{error_type=\"upstream_error\"}} +{n503}, "
                      f"업스트림 429 {n429}번 -> {{error_type=\"upstream_rate_limited\"}} +{n429} "
                      f"(LLM_MAX_ATTEMPTS={MAX_ATTEMPTS})",
             measured=f"upstream_error +{got['upstream_error']:g}, upstream_rate_limited +{got['upstream_rate_limited']:g} "
                      f"(보인 error_type 값: {', '.join(kinds) or '없음'}; /chat 응답 {statuses})")
    http = "http_server_request_duration_seconds_count"
    fives = sum(after.sum(http, http_route="/chat", http_response_status_code=c)
                - before.sum(http, http_route="/chat", http_response_status_code=c) for c in ("500", "502", "503", "504"))
    if fives != n503 + n429:
        fail(expected=f"/chat 의 5xx 응답 {n503 + n429}개가 http_server_request_duration_seconds 에 기록됨",
             measured=f"5xx 증가 {fives:g}개 (응답: {statuses})")


# --------------------------------------------------------------------------- feedback
def issue_ids(svc, n: int) -> list[str]:
    ids = []
    for i in range(n):
        body = chat_ok(svc, f"{QUESTION} (피드백 {i})")
        rid = body.get("response_id")
        if not isinstance(rid, str) or len(rid) != 32:
            fail(expected='/chat 응답에 "response_id": 32자리 16진수 문자열 (uuid4().hex)', measured=f"response_id={rid!r}",
                 hint="lesson.ipynb §6 '품질: 피드백, 거절률, LLM-as-a-judge' — /chat 응답에 이 서비스가 발급한 response_id 를 넣으세요.")
        ids.append(rid)
    return ids


FEEDBACK_COUNTERS = ("llm_feedback_total", "llm_feedback_score_count", "llm_feedback_score_sum")


def feedback_state(page: ms.MetricsPage) -> dict[str, float]:
    out = {f"llm_feedback_total{{rating={r}}}": page.sum("llm_feedback_total", rating=r) for r in ("up", "down")}
    out["llm_feedback_score_count"] = page.sum("llm_feedback_score_count")
    out["llm_feedback_score_sum"] = page.sum("llm_feedback_score_sum")
    return out


@check("step04.feedback")
def test_feedback_counts(service, simulator):
    ids = issue_ids(service, 5)
    before = feedback_state(metrics_or_blocked(service))
    votes = [("up", 5), ("up", None), ("down", 1), ("up", 4), ("down", None)]
    for rid, (rating, score) in zip(ids, votes):
        body = {"response_id": rid, "rating": rating}
        if score is not None:
            body["score"] = score
        r = post(service, "/feedback", body)
        if r.status_code != 200:
            fail(expected=f"POST /feedback {body} -> 200", measured=short(r))
    after = feedback_state(metrics_or_blocked(service))
    delta = {k: after[k] - before[k] for k in after}
    want = {"llm_feedback_total{rating=up}": 3, "llm_feedback_total{rating=down}": 2,
            "llm_feedback_score_count": 3, "llm_feedback_score_sum": 10}
    record("delta", delta)
    if delta != want:
        fail(expected="보낸 피드백 👍 3, 👎 2, 점수 3개(합 10) 만큼 카운터가 늘어남",
             measured=", ".join(f"{k} +{v:g}" for k, v in delta.items()))


@check("step04.feedback_validation")
def test_feedback_validation(service, simulator):
    ids = issue_ids(service, 2)
    rid, voted = ids
    before = feedback_state(metrics_or_blocked(service))
    r = post(service, "/feedback", {"response_id": voted, "rating": "down"})
    if r.status_code != 200:
        fail(expected="올바른 피드백 -> 200", measured=short(r))
    base = feedback_state(metrics_or_blocked(service))
    invalid = {
        "rating 이 up/down 이 아님": {"response_id": rid, "rating": "meh"},
        "rating 없음": {"response_id": rid},
        "response_id 없음": {"rating": "up"},
        "score 0 (1~5 밖)": {"response_id": rid, "rating": "up", "score": 0},
        "score 6 (1~5 밖)": {"response_id": rid, "rating": "up", "score": 6},
        "score 가 문자열": {"response_id": rid, "rating": "up", "score": "다섯"},
        "알 수 없는 필드": {"response_id": rid, "rating": "up", "admin": True},
        "comment 1001자": {"response_id": rid, "rating": "up", "comment": "가" * 1001},
        "JSON 이 아닌 본문": b"not json {",
    }
    bad = []
    for name, body in invalid.items():
        r = post(service, "/feedback", body)
        if r.status_code != 422:
            bad.append(f"{name} -> {r.status_code}")
    unknown = secrets.token_hex(16)
    r = post(service, "/feedback", {"response_id": unknown, "rating": "up"})
    if r.status_code != 404:
        bad.append(f"발급하지 않은 response_id -> {r.status_code} (404 이어야 함)")
    r = post(service, "/feedback", {"response_id": voted, "rating": "up"})
    if r.status_code != 409:
        bad.append(f"같은 response_id 에 두 번째 피드백 -> {r.status_code} (409 이어야 함)")
    r = post(service, "/feedback", {"response_id": rid, "rating": "up"}, key=None)
    if r.status_code != 401:
        bad.append(f"X-API-Key 없음 -> {r.status_code} (401 이어야 함)")
    after = feedback_state(metrics_or_blocked(service))
    changed = {k: after[k] - base[k] for k in after if after[k] != base[k]}
    record("bad", bad)
    record("counter_changes", changed)
    if bad:
        fail(expected="잘못된 피드백 본문은 422, 발급하지 않은 id 는 404, 두 번째 피드백은 409, 키 없으면 401",
             measured="; ".join(bad))
    if changed:
        fail(expected="거절된 피드백은 어떤 카운터도 바꾸지 않음",
             measured=", ".join(f"{k} +{v:g}" for k, v in changed.items()))
    if after["llm_feedback_total{rating=down}"] - before["llm_feedback_total{rating=down}"] != 1:
        blocked("step04.feedback", measured="올바른 👎 피드백 하나가 llm_feedback_total{rating=\"down\"} 을 1 늘리지 않음")


# --------------------------------------------------------------------------- quality
def quality_state(page: ms.MetricsPage) -> dict[str, float]:
    return {
        "refused": page.sum("llm_answers_total", refused="true", gen_ai_request_model=MODEL),
        "answered": page.sum("llm_answers_total", gen_ai_request_model=MODEL),
        "judge_count": page.sum("llm_judge_score_count"),
        "judge_sum": page.sum("llm_judge_score_sum"),
    }


@check("step04.quality")
def test_quality_signals(service, quiet_sim):
    sim = quiet_sim
    chat_ok(service)
    settle(sim)
    s0, m0 = sim.stats(), quality_state(metrics_or_blocked(service))
    messages = [QUESTION, OFF_TOPIC, "API 키를 잃어버렸어요. 어떻게 하나요?", "주식 투자 어떻게 해요?",
                "로그는 얼마 동안 보관되나요?", "축구 경기 결과 알려줘"]
    for m in messages:
        chat_ok(service, m)
    settle(sim)
    s1, m1 = sim.stats(), quality_state(metrics_or_blocked(service))
    sim_refused = s1["outcomes_by_model"].get(MODEL, {}).get("refused", 0) - s0["outcomes_by_model"].get(MODEL, {}).get("refused", 0)
    sim_judged = s1["judge"]["requests"] - s0["judge"]["requests"]
    sim_score = s1["judge"]["score_sum"] - s0["judge"]["score_sum"]
    got = {k: m1[k] - m0[k] for k in m1}
    record("simulator", {"refused": sim_refused, "judged": sim_judged, "score_sum": sim_score})
    record("service", got)
    if got["answered"] != len(messages) or got["refused"] != sim_refused:
        fail(expected=f"답 {len(messages)}개 중 거절 {sim_refused}개 (시뮬레이터의 판정) -> "
                      f"llm_answers_total{{gen_ai_request_model=\"{MODEL}\"}} +{len(messages)}, refused=\"true\" +{sim_refused}",
             measured=f"llm_answers_total +{got['answered']:g}, refused=\"true\" +{got['refused']:g}")
    if sim_judged != len(messages):
        fail(expected=f"JUDGE_SAMPLE_RATE={JUDGE_SAMPLE_RATE}: 답 {len(messages)}개를 모두 판정 모델 {JUDGE_MODEL} 로 채점",
             measured=f"판정 모델 호출 {sim_judged}번")
    if got["judge_count"] != sim_judged or got["judge_sum"] != sim_score:
        fail(expected=f"llm_judge_score 가 판정 모델의 점수와 같음: 개수 +{sim_judged}, 합 +{sim_score}",
             measured=f"개수 +{got['judge_count']:g}, 합 +{got['judge_sum']:g}")
    # 판정은 응답을 늦추지 않음: 판정 모델이 3초 멈춰도 /chat 은 바로 답하고, 판정 모델이 실패해도 5xx 가 아님.
    sim.configure(hang_rate=1.0, hang_seconds=3.0, fault_models=JUDGE_MODEL)
    started = time.monotonic()
    r = chat(service, "배포를 되돌리려면 어떻게 하나요?")
    took = time.monotonic() - started
    sim.configure(hang_rate=0.0, error_503_rate=1.0)
    r2 = chat(service, "서비스 장애가 나면 어디서 확인하나요?")
    sim.configure(error_503_rate=0.0, fault_models=None)
    record("chat_seconds_with_hanging_judge", round(took, 2))
    if r.status_code != 200 or took > 2.0:
        fail(expected="판정 모델이 3초 멈춰도 /chat 은 판정을 기다리지 않고 2초 안에 200 (asyncio.create_task)",
             measured=f"{short(r, 80)}, {took:.1f}초")
    if r2.status_code != 200:
        fail(expected="판정 모델이 503 으로 실패해도 /chat 은 200 (판정 실패는 메트릭에만)", measured=short(r2, 120))
    settle(sim, timeout=10)


# --------------------------------------------------------------------------- drift
@check("step04.drift")
def test_drift(service, graded_dir, simulator):
    chat_ok(service)
    try:
        with open(graded_dir / "eval" / "dataset.toml", "rb") as fh:
            baseline = [item["question"] for item in tomllib.load(fh)["items"]]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        blocked("step03.eval_dataset", measured=f"eval/dataset.toml 의 질문을 읽을 수 없음: {exc}")
    usual = [baseline[i % len(baseline)] for i in range(DRIFT_WINDOW)]
    for m in usual:
        chat_ok(service, m)
    low = metrics_or_blocked(service).sum("llm_input_drift_psi")
    long_messages = [f"{QUESTION} " + "자세한 배경 설명입니다. " * (20 + i % 30) for i in range(DRIFT_WINDOW)]
    for m in long_messages:
        chat_ok(service, m)
    high = metrics_or_blocked(service).sum("llm_input_drift_psi")
    settle(simulator)
    record("psi_usual", round(low, 4))
    record("psi_long", round(high, 4))
    if not high > PSI_HIGH:
        fail(expected=f"기준(평가 세트 질문)보다 훨씬 긴 메시지 {DRIFT_WINDOW}개 (DRIFT_WINDOW={DRIFT_WINDOW}) 뒤 "
                      f"llm_input_drift_psi > {PSI_HIGH}",
             measured=f"PSI {high:.3f} (평소 질문 {DRIFT_WINDOW}개 뒤 {low:.3f})")
    if not low < PSI_LOW:
        fail(expected=f"평가 세트와 같은 질문 {DRIFT_WINDOW}개 뒤 llm_input_drift_psi < {PSI_LOW}",
             measured=f"PSI {low:.3f}")


# --------------------------------------------------------------------------- cardinality
@check("step04.cardinality")
def test_cardinality(service, simulator):
    users = [f"user-{i:03d}" for i in range(50)]
    r = chat(service, QUESTION, user_id=users[0])
    if r.status_code == 422 and "user_id" in r.text:
        fail(expected='POST /chat 이 선택 필드 "user_id" (^[A-Za-z0-9_.:@-]{1,64}$) 를 받음', measured=short(r),
             hint="lesson.ipynb §2 'Prometheus 데이터 모델과 이름 규칙' — ChatRequest 에 user_id: str | None 을 추가하세요 "
                  "(라벨이 아니라 요청 필드입니다).")
    # 모든 라벨 조합을 먼저 만듭니다 (답, 거절, 판정): 그 뒤로는 새 시계열이 생기면 안 됩니다.
    for m in (QUESTION, OFF_TOPIC):
        chat_ok(service, m, user_id=users[0])
    settle(simulator)
    before = metrics_or_blocked(service)
    sent = []
    for i in range(200):
        m = f"{QUESTION} 질문 번호 {i} 토큰 {secrets.token_hex(4)}" if i % 5 else f"{OFF_TOPIC} {i}번째 {secrets.token_hex(4)}"
        sent.append(m)
        chat_ok(service, m, user_id=users[i % len(users)])
    settle(simulator)
    after = metrics_or_blocked(service)
    new = after.series() - before.series()
    record("series_before", len(before.series()))
    record("series_after", len(after.series()))
    if new:
        names = {}
        for name, labels in new:
            names[name] = names.get(name, 0) + 1
        labels = sorted({k for _, ls in new for k, _ in ls})
        leaked = [v for v in after.label_values() if v in users or any(v in m and len(v) > 8 for m in sent[:50])]
        fail(expected="서로 다른 메시지 200개, 사용자 50명을 보내도 시계열 수가 그대로",
             measured=f"시계열 {len(before.series())} -> {len(after.series())} (+{len(new)}): "
                      + ", ".join(f"{n} +{c}" for n, c in sorted(names.items(), key=lambda x: -x[1])[:4]),
             detail=f"새 시계열의 라벨: {', '.join(labels)}" + (f"; 라벨 값에 보인 사용자/메시지: {leaked[:3]}" if leaked else ""))


# --------------------------------------------------------------------------- static config checks
def monitoring_dir(step_dir: Path) -> Path:
    return step_dir / "monitoring"


def require_prom_tools(*names: str) -> None:
    kp.require_tools(*names, reason="step 04 의 Prometheus/Alertmanager 검사에 필요합니다")


@check("step04.prometheus_config")
def test_prometheus_config(step_dir, request):
    path = monitoring_dir(step_dir) / "prometheus.yml"
    doc, err = ms.load_yaml(path)
    if err:
        fail(expected="monitoring/prometheus.yml (Prometheus 설정)", measured=err)
    res = kp.check_config(path)
    record("promtool", res.ok)
    if not res.ok:
        fail(expected="promtool check config monitoring/prometheus.yml 통과", measured=res.summary(12))
    job = ms.chat_job(doc)
    if job is None:
        jobs = [j.get("job_name") for j in doc.get("scrape_configs") or [] if isinstance(j, dict)]
        fail(expected=f"scrape_configs 에 job_name: {ms.JOB}", measured=f"job: {', '.join(map(str, jobs)) or '없음'}")
    if job.get("metrics_path", "/metrics") != "/metrics":
        fail(expected="metrics_path: /metrics", measured=f"metrics_path: {job.get('metrics_path')}")
    if "alerts.yml" not in ms.rule_file_names(doc):
        fail(expected="rule_files 에 alerts.yml", measured=f"rule_files: {doc.get('rule_files')}")
    ams = ((doc.get("alerting") or {}).get("alertmanagers") or [])
    if not any((a or {}).get("static_configs") for a in ams):
        fail(expected="alerting.alertmanagers 에 Alertmanager 주소 (static_configs.targets)",
             measured="alerting 설정 없음" if not ams else str(ams)[:200])
    # 채점용 Prometheus (이 파일에서 대상 주소, 주기, Alertmanager 주소만 바꾼 것) 가 서비스를 실제로 수집함
    # (파일 자체의 문제는 위에서 먼저: 서비스와 Prometheus 를 띄우기 전에 실패)
    stack = request.getfixturevalue("stack")
    if stack.fallback:
        fail(expected="이 파일로 채점용 Prometheus 를 시작", measured=stack.fallback)
    targets = stack.prom.targets()
    record("targets", [(t["labels"].get("job"), t["health"]) for t in targets])
    if not any(t["labels"].get("job") == ms.JOB and t["health"] == "up" for t in targets):
        fail(expected=f"채점용 Prometheus 에서 job {ms.JOB} 대상이 up",
             measured="; ".join(f"{t['labels'].get('job')}: {t['health']} {t.get('lastError', '')}" for t in targets))


def rules_doc(step_dir: Path) -> dict:
    path = monitoring_dir(step_dir) / "alerts.yml"
    doc, err = ms.load_yaml(path)
    if err:
        fail(expected="monitoring/alerts.yml (알림 규칙)", measured=err)
    return doc


def rules_or_blocked(step_dir: Path) -> dict:
    path = monitoring_dir(step_dir) / "alerts.yml"
    doc, err = ms.load_yaml(path)
    if err or not kp.check_rules(path).ok:
        blocked("step04.alert_rules", measured=err or "promtool check rules monitoring/alerts.yml 실패")
    return doc


@check("step04.alert_rules")
def test_alert_rules(step_dir):
    require_prom_tools("promtool")
    doc = rules_doc(step_dir)
    res = kp.check_rules(monitoring_dir(step_dir) / "alerts.yml")
    if not res.ok:
        fail(expected="promtool check rules monitoring/alerts.yml 통과", measured=res.summary(12))
    rules = ms.alert_rules(doc)
    record("alerts", sorted(rules))
    missing = [a for a in ms.ALERTS if a not in rules]
    if missing:
        fail(expected="알림 다섯 개: " + ", ".join(ms.ALERTS), measured=f"없는 알림: {', '.join(missing)}")
    problems = []
    for name in ms.ALERTS:
        rule = rules[name]
        wait = ms.duration_seconds(rule.get("for"))
        if wait is None or wait < 60:
            problems.append(f"{name}: for: {rule.get('for', '없음')} (1m 이상이어야 함)")
        sev = (rule.get("labels") or {}).get("severity")
        if sev not in ms.SEVERITIES:
            problems.append(f"{name}: labels.severity={sev!r} ({'|'.join(ms.SEVERITIES)})")
        ann = rule.get("annotations") or {}
        if not str(ann.get("summary", "")).strip():
            problems.append(f"{name}: annotations.summary 없음")
        if not str(ann.get("runbook_url", "")).startswith(("http://", "https://")):
            problems.append(f"{name}: annotations.runbook_url={ann.get('runbook_url')!r} (http(s) 주소)")
    if problems:
        fail(expected="알림마다 for: 1m 이상, labels.severity, annotations.summary, annotations.runbook_url",
             measured="; ".join(problems))


@check("step04.rule_tests")
def test_learner_rule_tests(step_dir, tmp_path):
    require_prom_tools("promtool")
    rules_or_blocked(step_dir)
    path = monitoring_dir(step_dir) / "alerts_test.yml"
    doc, err = ms.load_yaml(path)
    if err:
        fail(expected="monitoring/alerts_test.yml (promtool 규칙 단위 테스트)", measured=err)
    res = kp.test_rules(path)
    record("promtool_test", res.ok)
    if not res.ok:
        fail(expected="promtool test rules monitoring/alerts_test.yml 통과", measured=res.summary(15))
    firing, quiet = set(), set()
    for test in doc.get("tests") or []:
        for case in (test or {}).get("alert_rule_test") or []:
            name = (case or {}).get("alertname")
            (firing if case.get("exp_alerts") else quiet).add(name)
    record("firing_cases", sorted(map(str, firing)))
    record("quiet_cases", sorted(map(str, quiet)))
    missing = [f"{a} ({'울리는 경우' if a not in firing else ''}{', ' if a not in firing and a not in quiet else ''}"
               f"{'조용한 경우' if a not in quiet else ''})" for a in ms.ALERTS if a not in firing or a not in quiet]
    if missing:
        fail(expected="알림 다섯 개마다 alert_rule_test 두 개: exp_alerts 가 있는 경우(울림)와 빈 경우(조용함)",
             measured="없는 경우: " + "; ".join(missing))


@check("step04.rule_semantics")
def test_hidden_rule_semantics(step_dir, tmp_path):
    require_prom_tools("promtool")
    doc = rules_or_blocked(step_dir)
    rules = ms.alert_rules(doc)
    (tmp_path / "alerts.yml").write_text((monitoring_dir(step_dir) / "alerts.yml").read_text(encoding="utf-8"),
                                         encoding="utf-8")
    wrong, results = [], {}
    for i, case in enumerate(ms.rule_cases()):
        rule = rules.get(case.alert)
        if rule is None:
            wrong.append(f"{case.alert}: 알림이 없음")
            continue
        test = tmp_path / f"hidden_{i}.yml"
        test.write_text(yaml.safe_dump(ms.rule_case_test("alerts.yml", str(rule["expr"]).strip(), case),
                                       sort_keys=False, allow_unicode=True), encoding="utf-8")
        res = kp.test_rules(test)
        results[f"{case.alert}/{'울림' if case.fires else '조용'}/{i}"] = res.ok
        if not res.ok:
            if "FAILED" not in res.output or "exp:" not in res.output:
                wrong.append(f"{case.alert} ({case.what}): 식을 평가할 수 없음 — {res.output.strip().splitlines()[-1][:160]}")
            else:
                wrong.append(f"{case.alert}: {case.what} -> {'울리지 않음 (울려야 함)' if case.fires else '울림 (조용해야 함)'}")
    record("cases", results)
    if wrong:
        fail(expected="채점기의 숨은 상황에서 알림 식이 옳게 반응 (for: 는 빼고 식만 95분 시점에 평가)",
             measured="; ".join(dict.fromkeys(wrong)))


@check("step04.alertmanager_config")
def test_alertmanager_config(step_dir):
    require_prom_tools("amtool")
    path = monitoring_dir(step_dir) / "alertmanager.yml"
    doc, err = ms.load_yaml(path)
    if err:
        fail(expected="monitoring/alertmanager.yml (Alertmanager 설정)", measured=err)
    res = kp.amtool_check_config(path)
    if not res.ok:
        fail(expected="amtool check-config monitoring/alertmanager.yml 통과", measured=res.summary(12))
    if not ms.route_reaches_webhook(doc):
        names = [r.get("name") for r in doc.get("receivers") or [] if isinstance(r, dict)]
        fail(expected="route.receiver (또는 하위 route) 가 webhook_configs 가 있는 수신자",
             measured=f"route.receiver={((doc.get('route') or {}).get('receiver'))!r}, 수신자: {names}")
    route = doc.get("route") or {}
    if "alertname" not in (route.get("group_by") or []) and route.get("group_by") != ["..."]:
        fail(expected="route.group_by 에 alertname", measured=f"group_by: {route.get('group_by')}")
    hooks = [h for r in doc.get("receivers") or [] for h in (r or {}).get("webhook_configs") or []]
    if not all(isinstance(h, dict) and h.get("send_resolved", True) for h in hooks):
        fail(expected="webhook_configs 의 send_resolved: true (해결도 알림)", measured=str(hooks)[:200])


@check("step04.compose")
def test_compose(step_dir):
    path = monitoring_dir(step_dir) / "compose.yaml"
    doc, err = ms.load_yaml(path)
    if err:
        fail(expected="monitoring/compose.yaml", measured=err)
    tool = tool_path("check-jsonschema")
    if tool is None:
        skip_or_fail("check-jsonschema 이(가) 없어 Compose 스펙 검사를 건너뜁니다 (pip install check-jsonschema)")
    proc = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        fail(expected="check-jsonschema --builtin-schema vendor.compose-spec monitoring/compose.yaml 통과",
             measured=(proc.stdout + proc.stderr).strip()[-600:])
    services = doc.get("services") or {}
    images = {name: str((svc or {}).get("image", "")) for name, svc in services.items()}
    missing = [want for want in ("prometheus", "alertmanager", "grafana")
               if not any(want in name or want in img for name, img in images.items())]
    if missing:
        fail(expected="서비스: prometheus, alertmanager, grafana", measured=f"없는 것: {', '.join(missing)} (있는 서비스: {', '.join(services)})")
    bad, mounted = [], []
    for name, svc in services.items():
        for vol in (svc or {}).get("volumes") or []:
            src = vol.get("source") if isinstance(vol, dict) else str(vol).split(":")[0]
            if isinstance(vol, dict) and vol.get("type") not in (None, "bind"):
                continue
            if not src or not str(src).startswith((".", "/")):
                continue  # named volume
            host = (path.parent / src).resolve()
            mounted.append(str(src))
            if not host.exists():
                bad.append(f"{name}: {src}")
    record("mounted", mounted)
    if bad:
        fail(expected="compose.yaml 이 마운트하는 파일과 폴더가 모두 있음 (compose.yaml 기준 상대 경로)",
             measured="없는 경로: " + ", ".join(bad))
    need = ["prometheus.yml", "alerts.yml", "alertmanager.yml", "grafana/provisioning", "grafana/dashboards"]
    covered = [n for n in need if any(n in m or m.rstrip("/").endswith(n.split("/")[0]) for m in mounted)]
    miss = [n for n in need if n not in covered]
    if miss:
        fail(expected="설정 파일과 Grafana 프로비저닝이 마운트됨: " + ", ".join(need), measured="마운트 안 됨: " + ", ".join(miss))
    for rel in ("grafana/provisioning/datasources", "grafana/provisioning/dashboards", "grafana/dashboards"):
        folder = monitoring_dir(step_dir) / rel
        if not folder.is_dir() or not any(folder.iterdir()):
            fail(expected=f"monitoring/{rel}/ 에 프로비저닝 파일", measured="폴더가 없거나 비어 있음")
    check_provisioning(monitoring_dir(step_dir), services)


def check_provisioning(mon: Path, services: dict) -> None:
    """Grafana's provisioning is wired: a Prometheus datasource whose uid the dashboard's panels use,
    and a file provider reading the folder compose mounts grafana/dashboards into."""
    from coursekit import grafana

    uids = []
    for f in sorted((mon / "grafana/provisioning/datasources").glob("*.y*ml")):
        try:
            uids += grafana.datasource_uids(f)
        except grafana.GrafanaError as exc:
            fail(expected="Grafana 데이터소스 provisioning YAML", measured=str(exc))
    if not uids:
        fail(expected="grafana/provisioning/datasources/ 에 type: prometheus, uid 가 있는 데이터소스",
             measured="Prometheus 데이터소스가 정의되지 않음 (datasources: 목록이 비어 있음)")
    dash = mon / "grafana/dashboards/llm-chat.json"
    if dash.is_file():
        wrong = [w for uid in uids[:1] for w in grafana.problems(dash, datasource_uid=uid) if "데이터소스" in w]
        if wrong and not any(not [w for w in grafana.problems(dash, datasource_uid=u) if "데이터소스" in w] for u in uids):
            fail(expected=f"대시보드 패널이 provisioning 의 데이터소스 uid ({', '.join(uids)}) 를 가리킴",
                 measured="; ".join(wrong[:3]))
    targets = {}
    for svc in services.values():
        for vol in (svc or {}).get("volumes") or []:
            if isinstance(vol, dict):
                src, dst = str(vol.get("source", "")), str(vol.get("target", ""))
            else:
                parts = str(vol).split(":")
                src, dst = parts[0], parts[1] if len(parts) > 1 else ""
            targets[src.rstrip("/").removeprefix("./")] = dst.rstrip("/")
    mounted_at = targets.get("grafana/dashboards")
    paths = []
    for f in sorted((mon / "grafana/provisioning/dashboards").glob("*.y*ml")):
        doc, err = ms.load_yaml(f)
        if err:
            fail(expected="Grafana 대시보드 provisioning YAML", measured=err)
        for prov in doc.get("providers") or []:
            if isinstance(prov, dict) and prov.get("type", "file") == "file":
                paths.append(str((prov.get("options") or {}).get("path", "")).rstrip("/"))
    if not paths:
        fail(expected="grafana/provisioning/dashboards/ 에 type: file 대시보드 공급자(providers)",
             measured="공급자가 정의되지 않음 (providers: 목록이 비어 있음)")
    if mounted_at and mounted_at not in paths:
        fail(expected=f"대시보드 공급자의 options.path 가 compose 가 grafana/dashboards 를 마운트한 {mounted_at}",
             measured=f"options.path: {', '.join(paths)}")


# --------------------------------------------------------------------------- live stack
class Stack:
    def __init__(self, prom, am, hook, fallback: str | None, am_fallback: str | None, rules_loaded: bool,
                 alerting: bool):
        self.prom, self.am, self.hook = prom, am, hook
        self.fallback, self.am_fallback, self.rules_loaded = fallback, am_fallback, rules_loaded
        self.alerting = alerting


@pytest.fixture(scope="module")
def stack(step_dir, service):
    """A real Alertmanager (the learner's alertmanager.yml, webhook -> the grader's receiver) and a
    real Prometheus (the learner's prometheus.yml: job llm-chat -> this service, 1 s intervals, the
    learner's alerts.yml with LLMHighErrorRate's for: shortened to FOR_SHORT)."""
    require_prom_tools("prometheus", "alertmanager")
    mon = monitoring_dir(step_dir)
    hook = kp.WebhookReceiver().start()
    am_doc, am_err = ms.load_yaml(mon / "alertmanager.yml")
    am_fallback = am_err
    if am_doc is not None:
        am_cfg, hooks = ms.graded_alertmanager_config(am_doc, hook.url)
        if hooks == 0:
            am_fallback = "alertmanager.yml 에 webhook_configs 가 없음"
    am = None
    if am_fallback is None:
        try:
            am = kp.Alertmanager(am_cfg).start()
        except kp.PrometheusError as exc:
            am_fallback = f"학습자의 alertmanager.yml 로 Alertmanager 가 시작하지 않음: {str(exc).splitlines()[0]}"
    if am is None:
        am = kp.Alertmanager(kp.alertmanager_config(hook.url)).start()
    prom_doc, prom_err = ms.load_yaml(mon / "prometheus.yml")
    fallback = prom_err or (None if ms.chat_job(prom_doc) else f"job {ms.JOB} 이 없음")
    # The learner's rule_files and alerting are honoured (without them no alert reaches anyone); only
    # when the file cannot be used at all does the grader load alerts.yml itself, so the alert checks
    # still say something about the rules and Alertmanager.
    names = ["alerts.yml"] if fallback else ms.rule_file_names(prom_doc)
    alerting = bool(fallback) or any((a or {}).get("static_configs")
                                     for a in ((prom_doc.get("alerting") or {}).get("alertmanagers") or []))
    files, rule_files = {}, []
    for name in names:
        doc, _ = ms.load_yaml(mon / name)
        if doc is not None:
            files[name] = yaml.safe_dump(ms.with_short_for(doc, "LLMHighErrorRate", FOR_SHORT),
                                         sort_keys=False, allow_unicode=True)
            rule_files.append(name)
    cfg = ms.graded_prometheus_config(prom_doc, f"127.0.0.1:{service.port}", am.address if alerting else None,
                                      rule_files)
    prom = None
    try:
        prom = kp.Prometheus(cfg, files=files).start()
    except kp.PrometheusError as exc:
        fallback = f"Prometheus 가 시작하지 않음: {str(exc).splitlines()[0]}"
        rule_files, files = [], {}
    if prom is None:
        prom = kp.Prometheus(kp.prometheus_config({ms.JOB: [f"127.0.0.1:{service.port}"]}, alertmanager=am.address)).start()
    try:
        # A service without a working /metrics (the untouched starter) is not waited for until the
        # timeout: one failed scrape (about 5 s after start) gives the checks its error to show.
        try:
            metrics_ok = httpx.get(f"{service.base_url}/metrics", timeout=5).status_code == 200
        except httpx.HTTPError:
            metrics_ok = False
        try:
            prom.wait_for_targets(timeout=20 if metrics_ok else 12, job=ms.JOB,
                                  health="up" if metrics_ok else "down")
        except kp.PrometheusError:
            pass  # the checks say what is wrong (the target is down: /metrics)
        yield Stack(prom, am, hook, fallback, am_fallback, bool(rule_files), alerting)
    finally:
        prom.stop()
        am.stop()
        hook.stop()


@pytest.fixture(scope="module")
def traffic(stack, service, simulator):
    """Locust load (realistic simulator latency) while Prometheus scrapes every second, then a few
    faults and feedback votes so every dashboard panel has data. Returns (Locust result, start, end of
    the load with its last requests served, the moment Locust stopped)."""
    require_scraped(stack)  # no load without a /metrics Prometheus can scrape: the checks are blocked
    probe = chat(service)
    if probe.status_code != 200:
        blocked("step02.contract", measured=f"부하 테스트 전 확인 요청 POST /chat -> {short(probe)}")
    settle(simulator)
    scraped(stack)
    start = time.time()
    simulator.configure(latency="realistic")
    try:
        res = run_locust("chat.py", service.base_url, users=LOAD_USERS, spawn_rate=LOAD_USERS, run_time_s=LOAD_SECONDS,
                         env={"GRADER_SERVICE_KEY": SERVICE_KEY})
    finally:
        simulator.configure(latency="zero")
    stopped = time.time()
    settle(simulator)
    scraped(stack)  # a scrape after the last request of the load
    end = time.time()
    simulator.configure(error_503_rate=1.0, fault_models=MODEL)
    for _ in range(2):
        chat(service)
    simulator.configure(error_503_rate=0.0, fault_models=None)
    for i in range(2):
        r = chat(service, f"{QUESTION} (대시보드 {i})")
        rid = r.json().get("response_id") if r.status_code == 200 else None
        if rid:
            post(service, "/feedback", {"response_id": rid, "rating": "up" if i else "down", "score": 4})
    settle(simulator)
    scraped(stack, 2)
    return res, start, end, stopped


def scraped(stack, scrapes: int = 1) -> None:
    """Wait until Prometheus scraped the service `scrapes` times from now (when it can)."""
    if _up(stack):
        try:
            stack.prom.wait_for_targets(timeout=10, job=ms.JOB, scrapes=scrapes)
        except kp.PrometheusError:
            pass


def _up(stack) -> bool:
    return any(t["labels"].get("job") == ms.JOB and t["health"] == "up" for t in stack.prom.targets())


def require_scraped(stack):
    if not _up(stack):
        blocked("step04.metrics_endpoint", measured="채점용 Prometheus 가 서비스의 /metrics 를 수집하지 못함: "
                + "; ".join(f"{t['health']} {t.get('lastError', '')}" for t in stack.prom.targets()))


@check("step04.load")
def test_load_seen_by_prometheus(stack, traffic):
    require_scraped(stack)
    res, start, end, stopped = traffic
    print(res.summary())
    record("locust", {"requests": res.requests, "failures": res.failures, "p95_seconds": res.p95})
    if res.requests == 0 or res.failures:
        blocked("step02.contract", measured=f"부하 중 실패: {res.summary()}")
    sel = f'http_server_request_duration_seconds_count{{job="{ms.JOB}", http_route="/chat"}}'
    counted = stack.prom.delta(f"sum({sel}) or vector(0)", start, end)
    record("prometheus_requests", counted)
    if not res.requests <= counted <= res.requests + LOAD_USERS:
        fail(expected=f"Prometheus 가 센 /chat 요청 수 = Locust 의 {res.requests}개 "
                      f"(+ 멈출 때 진행 중이던 요청 최대 {LOAD_USERS}개)",
             measured=f"{counted:g}개 (`sum({sel})` 의 {end - start:.0f}초 동안 증가량)")
    # p95 of the requests served while Locust ran: the ones still in flight when it stopped finish later
    # and are the long ones (a request in flight at a given moment is more likely a long one).
    window = int(stopped - start) + 1
    expr = (f'histogram_quantile(0.95, sum by (le) (increase(http_server_request_duration_seconds_bucket'
            f'{{job="{ms.JOB}", http_route="/chat"}}[{window}s])))')
    p95 = stack.prom.value(expr, at=stopped)
    record("prometheus_p95_seconds", p95)
    if p95 is None or math.isnan(p95) or not res.p95 / P95_FACTOR <= p95 <= res.p95 * P95_FACTOR:
        fail(expected=f"Prometheus 의 p95 ({expr}) 가 Locust 의 p95 {res.p95:.2f}초의 "
                      f"1/{P95_FACTOR:g}배 ~ {P95_FACTOR:g}배 (버킷 한 칸) 안",
             measured=f"{p95 if p95 is not None else '값 없음'}")


TOKEN_MESSAGES = (QUESTION, OFF_TOPIC, "API 키를 잃어버렸어요. 어떻게 하나요?", "로그는 얼마 동안 보관되나요?")


def own_traffic(service, simulator):
    """(simulator tokens before, after, /metrics before, after) around a few answers and their judge calls.
    Deltas, not totals: a request Locust abandons when it stops may be answered by the simulator (tokens
    counted there) while the service's handler is cancelled before it records them."""
    chat_ok(service)
    settle(simulator)
    t0, p0 = model_tokens(simulator), metrics_or_blocked(service)
    for m in TOKEN_MESSAGES:
        chat_ok(service, m)
    settle(simulator)
    return t0, model_tokens(simulator), p0, metrics_or_blocked(service)


def token_delta(t0, t1) -> dict[str, dict[str, int]]:
    zero = {"input": 0, "output": 0, "thoughts": 0}
    return {m: {k: t1[m][k] - t0.get(m, zero)[k] for k in zero} for m in t1
            if any(t1[m][k] != t0.get(m, zero)[k] for k in zero)}


@check("step04.tokens")
def test_tokens_match_simulator(service, simulator):
    t0, t1, p0, p1 = own_traffic(service, simulator)
    sim_tokens = token_delta(t0, t1)
    got, bad = {}, []
    name = "gen_ai_client_token_usage_sum"
    for model, t in sim_tokens.items():
        for kind in ("input", "output"):
            value = (p1.sum(name, gen_ai_request_model=model, gen_ai_token_type=kind)
                     - p0.sum(name, gen_ai_request_model=model, gen_ai_token_type=kind))
            got[f"{model}/{kind}"] = value
            if value != t[kind]:
                extra = ""
                if kind == "output" and t["thoughts"] and value == t[kind] + t["thoughts"]:
                    extra = f" — 사고 토큰 {t['thoughts']}개를 두 번 셈"
                elif kind == "output" and t["thoughts"] and value == t[kind] - t["thoughts"]:
                    extra = f" — 사고 토큰 {t['thoughts']}개가 빠짐"
                bad.append(f"{model} {kind}: 시뮬레이터 {t[kind]}, 서비스 {value:g}{extra}")
    record("simulator", sim_tokens)
    record("service", got)
    if not sim_tokens:
        blocked("step02.contract", measured="시뮬레이터가 성공한 생성 요청을 하나도 받지 않음")
    if bad:
        fail(expected=f"답 {len(TOKEN_MESSAGES)}개 (와 그 판정) 동안 gen_ai_client_token_usage_sum{{gen_ai_request_model, "
                      "gen_ai_token_type} 의 증가량 = 시뮬레이터가 센 토큰 (출력에는 사고 토큰이 한 번 들어 있음; 판정 모델 포함)",
             measured="; ".join(bad))


@check("step04.cost")
def test_cost_matches_price_table(service, simulator):
    t0, t1, p0, p1 = own_traffic(service, simulator)
    bad, got = [], {}
    for model, t in token_delta(t0, t1).items():
        p = price_for(model)
        want = (t["input"] * p.input_usd_per_1m + t["output"] * p.output_usd_per_1m) / 1e6
        value = p1.sum("llm_cost_usd_total", gen_ai_request_model=model) - p0.sum("llm_cost_usd_total",
                                                                                    gen_ai_request_model=model)
        got[model] = {"service": value, "expected": want}
        if not math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-12):
            bad.append(f"{model}: 기대 {want:.8f} USD ((입력 {t['input']} x {p.input_usd_per_1m:g} + 출력 {t['output']} x "
                       f"{p.output_usd_per_1m:g}) / 1e6), 측정 {value:.8f} USD")
    record("cost", got)
    if bad:
        fail(expected=f"답 {len(TOKEN_MESSAGES)}개 (와 그 판정) 동안 llm_cost_usd_total{{gen_ai_request_model}} 의 증가량 = "
                      "모델별 토큰 x 코스 가격표 단가 (판정 모델 포함)",
             measured="; ".join(bad))


REQUIRED_PANELS = {
    # 신호: (표시 이름, 쿼리에 이 조각이 모두 있으면 그 신호의 패널)
    "latency_p50": ("지연 p50", ["histogram_quantile", "0.5", "_bucket"]),
    "latency_p95": ("지연 p95", ["histogram_quantile", "0.95", "_bucket"]),
    "latency_p99": ("지연 p99", ["histogram_quantile", "0.99", "_bucket"]),
    "rps": ("RPS", ["http_server_request_duration_seconds_count"]),
    "errors": ("에러율", ["http_server_request_duration_seconds_count", "5xx"]),
    "tokens": ("토큰", ["gen_ai_client_token_usage"]),
    "cost": ("비용", ["llm_cost_usd_total"]),
    "feedback": ("피드백", ["llm_feedback_total"]),
    "quality": ("품질 (판정)", ["llm_judge_score"]),
    "refusals": ("거절률", ["llm_answers_total"]),
    "drift": ("드리프트", ["llm_input_drift_psi"]),
}


def _matches(expr: str, parts: list[str]) -> bool:
    for p in parts:
        if p == "5xx":  # a 5xx status filter: =~"5..", =~"5.*", =~"5[0-9][0-9]", >= 500 ...
            if not re.search(r'status_code\s*=~\s*"5|status_code\s*>=?\s*"?5|=~\s*"5\.\.', expr):
                return False
        elif p in ("0.5", "0.95", "0.99"):
            if not re.search(r"histogram_quantile\s*\(\s*" + re.escape(p) + r"0*\s*,", expr):
                return False
        elif p not in expr:
            return False
    return True


@check("step04.dashboard")
def test_dashboard(step_dir, stack, traffic):
    require_scraped(stack)
    from coursekit import grafana

    path = monitoring_dir(step_dir) / "grafana" / "dashboards" / "llm-chat.json"
    if not path.is_file():
        fail(expected="monitoring/grafana/dashboards/llm-chat.json (대시보드)", measured="파일이 없습니다")
    try:
        panels = grafana.panels(path)
    except Exception as exc:
        fail(expected="Grafana 대시보드 JSON (panels[].targets[].expr)", measured=f"읽을 수 없음: {exc}")
    exprs = [(title, e) for title, es in panels for e in es]
    record("panels", len(panels))
    found = {k: [t for t, e in exprs if _matches(e, parts)] for k, (_, parts) in REQUIRED_PANELS.items()}
    missing = [REQUIRED_PANELS[k][0] for k, v in found.items() if not v]
    if missing:
        fail(expected="신호마다 패널: " + ", ".join(v[0] for v in REQUIRED_PANELS.values()),
             measured=f"없는 신호: {', '.join(missing)} (패널 {len(panels)}개: {', '.join(t for t, _ in panels)[:300]})")
    empty, invalid = [], []
    for title, e in exprs:
        q = grafana.render(e, rate_interval="1m")
        try:
            result = stack.prom.query(q)
        except kp.PrometheusError as exc:
            invalid.append(f"'{title}': {q} — {str(exc)[:160]}")
            continue
        if not result or all(math.isnan(float(r["value"][1])) for r in result if "value" in r):
            empty.append(f"'{title}': {q}")
    record("queries", len(exprs))
    if invalid:
        fail(expected="모든 패널 쿼리가 올바른 PromQL", measured="; ".join(invalid))
    if empty:
        fail(expected="모든 패널 쿼리가 방금 부하를 수집한 Prometheus 에서 데이터를 돌려줌",
             measured="데이터 없음: " + "; ".join(empty))


@check("step04.alert_delivery")
def test_alert_delivery(step_dir, stack, traffic, service, quiet_sim):
    require_scraped(stack)
    if not stack.rules_loaded:
        blocked("step04.prometheus_config", measured="prometheus.yml 의 rule_files 로 읽은 알림 규칙이 없음"
                + (f" ({stack.fallback})" if stack.fallback else ""))
    if not stack.alerting:
        blocked("step04.prometheus_config", measured="prometheus.yml 에 alerting.alertmanagers 가 없어 알림을 보낼 곳이 없음")
    if stack.am_fallback:
        blocked("step04.alertmanager_config", measured=stack.am_fallback)
    rules = {r.get("name"): r for g in stack.prom.rules() for r in g.get("rules", [])}
    if "LLMHighErrorRate" not in rules:
        blocked("step04.alert_rules", measured="채점용 Prometheus 에 LLMHighErrorRate 규칙이 없음")
    sim = quiet_sim
    sim.configure(error_503_rate=1.0, fault_models=MODEL)
    started = time.monotonic()
    sent = 0
    delivered = None
    deadline = started + DELIVERY_SECONDS
    while time.monotonic() < deadline:
        if sent < 120:
            for _ in range(10):
                chat(service)
            sent += 10
        delivered = stack.hook.wait_for_alert("LLMHighErrorRate", timeout=0.5)
        if delivered:
            break
    sim.configure(error_503_rate=0.0, fault_models=None)
    took = time.monotonic() - started
    record("faulted_requests", sent)
    record("delivery_seconds", round(took, 1))
    if delivered is None:
        state = [(a["labels"].get("alertname"), a.get("state")) for a in stack.prom.alerts()]
        firing = any(n == "LLMHighErrorRate" and s == "firing" for n, s in state)
        fail(expected=f"업스트림 503 을 주입하면 ({sent}개 요청; 채점기가 for: 를 {FOR_SHORT}, Alertmanager 의 group_wait 와 "
                      f"group_interval 을 1s 로 줄임) LLMHighErrorRate 가 "
                      f"{DELIVERY_SECONDS}초 안에 Alertmanager 를 거쳐 웹훅에 도착",
             measured=("Prometheus 에서는 firing 이지만 웹훅에 도착하지 않음 (Alertmanager 라우팅 확인)" if firing
                       else f"알림 상태: {state or '활성 알림 없음'} ({took:.0f}초)"),
             detail=f"규칙 상태: {rules['LLMHighErrorRate'].get('health')} {rules['LLMHighErrorRate'].get('lastError', '')}")
