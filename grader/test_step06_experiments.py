"""Step 06 채점 (2부 b): A/B 테스트와 카나리 모델 업데이트.

A/B 테스트: 기본값이 아닌 실험 이름과 치우친 가중치(0.3/0.7), 변형마다 다른 프롬프트 버전(v1/v2)과 모델로 학습자의
서비스를 띄우고 (응답 id 와 캐시는 진짜 redis-server), 서로 다른 사용자 1000명의 변형 비율, 같은 사용자의 같은 변형
(sticky), 응답의 prompt_version, model, X-Variant, 업스트림이 실제로 받은 시스템 프롬프트(시뮬레이터의 system_hash),
변형별 요청 메트릭, 채점기가 정한 비율로 보낸 피드백이 변형별 메트릭에 그대로 쌓이는지 봅니다. 이어서
`python -m ab_report --metrics-url` 을 학습자의 단계 폴더에서 실행해, 채점기가 직접 띄운 작은 HTTP 서버가 주는
/metrics 텍스트(숫자를 채점기가 정함)로 승자, 차이 없음, 데이터 부족, --alpha 와 --min-samples 를 확인합니다.

카나리: 같은 Redis 를 쓰는 복제본 세 개 (CANARY_MODEL=gemini-3.5-pro, CANARY_SHARE=0.2, CANARY_MIN_REQUESTS=10,
Fallback 없음, 캐시 없음). 건강할 때 카나리 비율과 상태를 보고, 시뮬레이터가 카나리 모델에만 503 을 내면 복제본 C 가
CANARY_MIN_REQUESTS 근처의 실패로 롤백하는지, 그 뒤로 C 와 다른 복제본 A, B (Redis 의 공유 상태를 읽음) 모두 카나리
모델을 한 번도 부르지 않는지 시뮬레이터의 모델별 집계로 셉니다.

긴 측정 전에는 언제나 싼 확인 요청을 먼저 보냅니다: 손대지 않은 스타터는 몇 초 안에 실패합니다.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from grader import experiments_support as xsup
from grader import harness
from grader import optimization_support as osup
from grader.harness import check, copy_step, fail, record, run_service

STEP = "step06"
BUDGET_SECONDS = 60

PRIMARY = "gemini-3.5-flash"
SERVICE_KEY = "svc-x-" + secrets.token_hex(12)
OTHER_KEYS = ["svc-x" + n + "-" + secrets.token_hex(10) for n in ("b", "c", "d")]
GOOGLE_KEY = "grader-gemini-" + secrets.token_hex(8)
QUESTION = "하늘클라우드 요금제는 어떻게 되나요?"
TIMEOUT = 10.0
WORKERS = 4                              # 동시 요청 (2코어에서 더 많으면 처리량은 같고 이벤트 루프만 밀림)
FEEDBACK_LOSS = 0.02                     # Redis 가 짧은 타임아웃(fail open)으로 응답 id 를 적지 못해 404 가 될 수 있는 몫


@pytest.fixture(scope="module", autouse=True)
def grading_time(request):
    """Print how long grading the A/B test and canary checks took."""
    with harness.report_grading_time(request, "step06 (A/B 테스트, 카나리)", BUDGET_SECONDS):
        yield


def service_env(simulator, root: Path, **extra: str) -> dict[str, str]:
    env = {
        "SERVICE_API_KEY": SERVICE_KEY,
        "SERVICE_API_KEYS": ",".join(OTHER_KEYS),
        "GOOGLE_API_KEY": GOOGLE_KEY,
        "GOOGLE_GEMINI_BASE_URL": simulator.base_url,
        "LLM_MODEL": PRIMARY,
        "LLM_TIMEOUT_SECONDS": "10",
        "LLM_MAX_ATTEMPTS": "1",
        "REQUEST_DEADLINE_SECONDS": "4",
        "FALLBACK_MODEL": "",
        "CIRCUIT_FAIL_MAX": "1000",
        "CIRCUIT_RESET_SECONDS": "30",
        "RATE_LIMIT": "100000/minute",
        "MAX_IN_FLIGHT": "300",
        "JUDGE_SAMPLE_RATE": "0",
        "LOG_DIR": str(root / "service-logs"),
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


def rid(tag: str) -> str:
    return f"grader-{tag}-{secrets.token_hex(6)}"


def calls(sim, model: str) -> int:
    return int((sim.stats().get("by_model") or {}).get(model, 0))


@pytest.fixture(scope="module")
def redis_srv():
    from coursekit.redis_server import RedisServer, require_redis

    require_redis("step 06 의 A/B 테스트와 카나리 검사에는 redis-server 가 필요합니다")
    with RedisServer() as srv:
        yield srv


def start_services(step_dir: Path, root: Path, stack: ExitStack, envs: list[tuple[str, dict[str, str]]]) -> list:
    """Start one copy of the step folder per (label, env), together (saves start-up time)."""
    def start(item):
        label, env = item
        sub = root / label
        sub.mkdir()
        graded = copy_step(step_dir, sub)
        return stack.enter_context(run_service(graded, env=env, name=f"{graded.name} ({label})"))

    with ThreadPoolExecutor(max_workers=len(envs)) as pool:
        return list(pool.map(start, envs))


# =========================================================================== A/B test (§15)
EXPERIMENT = "grader-tone-7x"            # AB_EXPERIMENT (기본값은 꺼짐)
CONTROL, TREATMENT = "base_v1", "brief-v2"
VARIANT_MODEL = "gemini-3.5-flash-lite"  # TREATMENT 만 다른 모델 (CONTROL 은 null = LLM_MODEL)
VARIANTS = {
    CONTROL: {"prompt_version": "v1", "model": None, "weight": 0.3},
    TREATMENT: {"prompt_version": "v2", "model": VARIANT_MODEL, "weight": 0.7},
}
USERS = 1000
SHARE_TOLERANCE = 0.05
STICKY_USERS = 100
FEEDBACK_PER_VARIANT = 150
UP_RATE = {CONTROL: 0.8, TREATMENT: 0.4}  # 채점기가 변형마다 정한 좋아요 비율


def want_model(variant: str) -> str:
    return VARIANTS[variant]["model"] or PRIMARY


@dataclass
class AbService:
    svc: Any
    folder: Path
    client: httpx.Client

    def ask(self, user: str | None, message: str = QUESTION, key: str = SERVICE_KEY, tag: str = "ab",
            client: httpx.Client | None = None) -> osup.Reply:
        return xsup.chat(client or self.client, self.svc.base_url, key, message, timeout=TIMEOUT, user_id=user,
                         rid=rid(tag))


@pytest.fixture
def ab_service(step_dir, tmp_path_factory, simulator, redis_srv):
    simulator.reset(config=True)
    root = tmp_path_factory.mktemp("step06-ab")
    env = service_env(simulator, root, AB_EXPERIMENT=EXPERIMENT, AB_VARIANTS=json.dumps(VARIANTS),
                      CACHE_TTL_SECONDS="45", REDIS_URL=redis_srv.url, PROMPT_VERSION="v1")
    with ExitStack() as stack:
        (svc,) = start_services(step_dir, root, stack, [("AB-검사용", env)])
        client = stack.enter_context(httpx.Client())
        yield AbService(svc, svc.cwd, client)
    simulator.reset(config=True)


def variant_of(r: osup.Reply) -> Any:
    return xsup.body_field(r, "variant")


def shape_problem(r: osup.Reply) -> str | None:
    """None when a 200 answer carries a known variant consistently (body, X-Variant, prompt_version, model)."""
    if r.status != 200:
        return r.short()
    v = variant_of(r)
    if v not in VARIANTS:
        return f"본문의 variant={v!r} (기대: {CONTROL!r} 또는 {TREATMENT!r})"
    header = r.headers.get("x-variant")
    if header != v:
        return f"X-Variant 헤더 {header!r} 가 본문의 variant {v!r} 와 다름"
    pv, model = xsup.body_field(r, "prompt_version"), xsup.body_field(r, "model")
    if pv != VARIANTS[v]["prompt_version"]:
        return f"변형 {v} 의 답인데 prompt_version={pv!r} (기대 {VARIANTS[v]['prompt_version']!r})"
    if model != want_model(v):
        return f"변형 {v} 의 답인데 model={model!r} (기대 {want_model(v)!r})"
    return None


@check("step06.ab_test")
def test_ab_test(ab_service, simulator):
    s = ab_service
    answered: Counter = Counter()         # 200 answers per variant (what llm_experiment_requests_total must say)

    # 1) 싼 확인: user_id 가 있는 /chat 의 답에 variant, X-Variant, 변형의 prompt_version 과 model.
    probe = s.ask("probe-user-1", tag="ab-probe")
    record("probe", f"{probe.short()}, variant={variant_of(probe)!r}, X-Variant={probe.headers.get('x-variant')!r}")
    why = shape_problem(probe)
    if why:
        fail(expected=f"AB_EXPERIMENT={EXPERIMENT} 이 켜진 서비스의 /chat 답: 200, 본문 variant ({CONTROL} 또는 "
                      f"{TREATMENT}), 같은 값의 X-Variant 헤더, 그 변형의 prompt_version 과 model",
             measured=why,
             hint="lesson.ipynb §15 'A/B 테스트' — AB_EXPERIMENT 와 AB_VARIANTS(JSON) 를 설정으로 읽고, 요청마다 "
                  "experiments.assign 으로 변형을 골라 그 변형의 프롬프트와 모델로 답하세요. 응답에는 variant 필드와 "
                  "X-Variant 헤더를 붙입니다.")
    answered[variant_of(probe)] += 1

    # 2) 업스트림이 받은 시스템 프롬프트: 캐시에 없는 질문 16개, 변형마다 한 가지이고 두 변형은 서로 다름.
    unique = xsup.pmap(lambda c, i: s.ask(f"sys-user-{i:02d}", f"{QUESTION} (확인 {i}번)", tag="ab-sys", client=c),
                       range(16), WORKERS)
    bad = [(r, shape_problem(r)) for r in unique if shape_problem(r)]
    if bad:
        fail(expected="캐시에 없는 질문 16개에 모두 200, 변형이 일관된 답", measured=f"{len(bad)}개가 다름: {bad[0][1]}")
    by_rid = {row.get("request_id"): row.get("system_hash") for row in simulator.requests(200)}
    hashes: dict[str, set] = {CONTROL: set(), TREATMENT: set()}
    for r in unique:
        answered[variant_of(r)] += 1
        if r.rid in by_rid:
            hashes[variant_of(r)].add(by_rid[r.rid])
    record("upstream_system_hashes", {k: sorted(str(h) for h in v) for k, v in hashes.items()})
    if all(hashes.values()) and (len(hashes[CONTROL]) != 1 or len(hashes[TREATMENT]) != 1
                                 or hashes[CONTROL] == hashes[TREATMENT]):
        fail(expected="업스트림이 받은 시스템 프롬프트가 변형마다 한 가지 (v1 과 v2 로 서로 다름)",
             measured=f"시뮬레이터가 본 시스템 프롬프트 해시: {CONTROL} {sorted(map(str, hashes[CONTROL]))}, "
                      f"{TREATMENT} {sorted(map(str, hashes[TREATMENT]))}",
             hint="lesson.ipynb §15 'A/B 테스트' — 변형의 prompt_version 을 응답에 적기만 하지 말고 그 버전의 시스템 "
                  "프롬프트로 물으세요 (시작할 때 변형마다 프롬프트 글을 읽어 둠).")

    # 3) 서로 다른 사용자 1000명: 변형 비율이 가중치(0.3/0.7) 근처.
    users = [f"u{i:04d}-grader" for i in range(USERS)]
    replies = xsup.pmap(lambda c, u: s.ask(u, client=c, tag="ab-user"), users, WORKERS)
    bad = [(r, shape_problem(r)) for r in replies if shape_problem(r)]
    record("users", osup.count_by(replies))
    if bad:
        fail(expected=f"사용자 {USERS}명의 /chat 이 모두 200, 답마다 변형이 일관됨 (variant, X-Variant, prompt_version, "
                      "model)",
             measured=f"{len(bad)}개가 다름: {bad[0][1]} (응답 {osup.count_by(replies)})")
    first = {u: variant_of(r) for u, r in zip(users, replies)}
    counts = Counter(first.values())
    answered.update(counts)
    shares = {v: counts.get(v, 0) / USERS for v in VARIANTS}
    documented = Counter(xsup.documented_assign(EXPERIMENT, u, [(k, v["weight"]) for k, v in VARIANTS.items()])
                         for u in users)
    record("shares", {k: round(v, 3) for k, v in shares.items()})
    record("documented_rule_shares", {k: documented.get(k, 0) / USERS for k in VARIANTS})
    record("same_as_documented_rule", sum(
        1 for u in users if first[u] == xsup.documented_assign(EXPERIMENT, u, [(k, v["weight"]) for k, v in
                                                                                VARIANTS.items()])))
    off = {v: shares[v] for v in VARIANTS if abs(shares[v] - VARIANTS[v]["weight"]) > SHARE_TOLERANCE}
    if off:
        fail(expected="사용자 1000명 중 변형 비율이 가중치 ±0.05 안: "
                      + ", ".join(f"{k} {v['weight']}" for k, v in VARIANTS.items()),
             measured=", ".join(f"{k} {shares[k]:.3f} ({counts.get(k, 0)}명)" for k in VARIANTS),
             hint="lesson.ipynb §15 'A/B 테스트' — AB_VARIANTS 의 weight 를 누적해 구간을 만들고, "
                  "sha256(\"실험:사용자\") 앞 8바이트 / 2**64 가 들어가는 구간의 변형을 고르세요 (변형 수로 나누면 "
                  "가중치가 무시됩니다).")

    # 4) 같은 사용자 100명이 두 번 더: 매번 같은 변형 (sticky).
    sticky = users[::USERS // STICKY_USERS][:STICKY_USERS] * 2
    again = xsup.pmap(lambda c, u: s.ask(u, client=c, tag="ab-again"), sticky, WORKERS)
    bad = [(r, shape_problem(r)) for r in again if shape_problem(r)]
    if bad:
        fail(expected="같은 사용자의 /chat 이 다시 200, 변형이 일관된 답", measured=f"{len(bad)}개가 다름: {bad[0][1]}")
    answered.update(variant_of(r) for r in again)
    moved = sorted({u for u, r in zip(sticky, again) if variant_of(r) != first[u]})
    record("sticky_changed_users", len(moved))
    if moved:
        u = moved[0]
        seen = [first[u]] + [variant_of(r) for x, r in zip(sticky, again) if x == u]
        fail(expected=f"사용자 {STICKY_USERS}명이 두 번 더 물어도 매번 처음과 같은 변형 (sticky)",
             measured=f"{len(moved)}명의 변형이 바뀜: 예 {u} -> {seen}",
             hint="lesson.ipynb §15 'A/B 테스트' — 요청마다 random 으로 고르면 한 사용자가 두 변형을 번갈아 봅니다. "
                  "변형은 실험 이름과 사용자에서 계산(해시)해 저장 없이도 늘 같게 하세요.")

    # 5) user_id 가 없으면 API 키가 사용자: 키마다 세 번, 매번 같은 변형.
    by_key: dict[str, list] = {}
    for i, key in enumerate([SERVICE_KEY, *OTHER_KEYS]):
        rs = [s.ask(None, key=key, tag="ab-key") for _ in range(3)]
        by_key[f"키{i + 1}"] = [variant_of(r) if r.status == 200 else r.short() for r in rs]
        bad = [shape_problem(r) for r in rs if shape_problem(r)]
        if bad:
            fail(expected="user_id 없는 /chat 도 200 과 변형이 일관된 답 (SERVICE_API_KEYS 의 키도)",
                 measured=f"키{i + 1}: {bad[0]}")
        answered.update(variant_of(r) for r in rs)
    record("no_user_id", by_key)
    mixed = {k: v for k, v in by_key.items() if len(set(v)) != 1}
    if mixed:
        fail(expected="user_id 가 없으면 같은 API 키의 요청은 매번 같은 변형 (사용자 = \"key:\" + sha256(키)[:16])",
             measured=", ".join(f"{k}: {v}" for k, v in mixed.items()))

    # 6) llm_experiment_requests_total{experiment, variant} == 채점기가 받은 200 답의 수.
    text = s.client.get(f"{s.svc.base_url}/metrics", timeout=5).text
    got = {v: xsup.metric_sum(text, "llm_experiment_requests_total", experiment=EXPERIMENT, variant=v)
           for v in VARIANTS}
    record("llm_experiment_requests_total", got)
    record("answered", dict(answered))
    if any(got[v] != answered.get(v, 0) for v in VARIANTS):
        fail(expected="/metrics 의 llm_experiment_requests_total{experiment=\"" + EXPERIMENT + "\", variant} == "
                      "채점기가 받은 변형별 200 답의 수 (캐시가 답한 것도): "
                      + ", ".join(f"{v} {answered.get(v, 0)}" for v in VARIANTS),
             measured=", ".join(f"{v} {got[v]:g}" for v in VARIANTS) if any(got.values()) else "시계열 없음",
             hint="lesson.ipynb §15 'A/B 테스트' — 답한 /chat 마다 llm.experiment.requests 를 "
                  "{experiment, variant} 라벨로 1 올리세요 (사용자 id 는 라벨에 넣지 않음).")

    # 7) 피드백: 변형마다 답 150개에 채점기가 정한 비율로 up/down -> llm_experiment_feedback_total 이 그대로.
    plan: list[tuple[str, str, str]] = []   # (variant, response_id, rating)
    sent: Counter = Counter()
    for v in VARIANTS:
        ids = [xsup.body_field(r, "response_id") for r in replies if variant_of(r) == v][:FEEDBACK_PER_VARIANT]
        ups = round(UP_RATE[v] * len(ids))
        for j, response_id in enumerate(ids):
            rating = "up" if j < ups else "down"
            plan.append((v, response_id, rating))
            sent[(v, rating)] += 1
    fb = xsup.pmap(lambda c, p: xsup.feedback(c, s.svc.base_url, SERVICE_KEY, p[1], p[2], timeout=TIMEOUT), plan,
                   WORKERS)
    not_ok = [r for r in fb if r.status != 200]
    record("feedback_sent", {f"{v} {rt}": n for (v, rt), n in sorted(sent.items())})
    record("feedback_not_200", osup.count_by(not_ok))
    if len(not_ok) > FEEDBACK_LOSS * len(plan):
        fail(expected=f"/chat 이 낸 response_id {len(plan)}개에 보낸 POST /feedback 이 모두 200 "
                      f"(Redis 시간 초과로 잃는 것은 {FEEDBACK_LOSS:.0%} 까지)",
             measured=f"{len(not_ok)}개가 다름: {osup.count_by(not_ok)}, 예 {not_ok[0].short()}")
    for (v, _, rating), r in zip(plan, fb):
        if r.status != 200:       # 서비스가 받지 않은 피드백은 메트릭에도 없어야 함
            sent[(v, rating)] -= 1
    text = s.client.get(f"{s.svc.base_url}/metrics", timeout=5).text
    fb_got = xsup.metric_by(text, "llm_experiment_feedback_total", ("variant", "rating"), experiment=EXPERIMENT)
    record("llm_experiment_feedback_total", {f"{v} {rt}": n for (v, rt), n in sorted(fb_got.items())})
    wrong = [(k, sent.get(k, 0), fb_got.get(k, 0.0)) for k in sorted(set(sent) | set(fb_got)) if
             sent.get(k, 0) != fb_got.get(k, 0.0)]
    if wrong:
        fail(expected="/metrics 의 llm_experiment_feedback_total{experiment, variant, rating} == 채점기가 보낸 피드백: "
                      + ", ".join(f"{v} {rt} {n}" for (v, rt), n in sorted(sent.items())),
             measured=", ".join(f"{k[0] or '(빈 값)'} {k[1]} {got_n:g}개 (기대 {want})" for k, want, got_n in wrong[:4]),
             hint="lesson.ipynb §15 'A/B 테스트' — 응답 id 를 낼 때 변형도 함께 저장하고 (Redis 값 또는 메모리), "
                  "/feedback 에서 그 id 의 변형으로 llm_experiment_feedback_total 을 올리세요. 피드백을 받을 때 "
                  "변형을 다시 계산하거나 빼면 평가가 엉뚱한 변형에 쌓입니다.")

    # 8) python -m ab_report: 채점기가 숫자를 정한 /metrics 로 결정을 확인.
    check_ab_report(s.folder)


REPORT_EXPERIMENT = "checkout-copy-3"
A, B = "blue_x", "green-y"
MIN_SAMPLES = 150                        # --min-samples (기본 100)


def check_ab_report(folder: Path) -> None:
    from scipy.stats import fisher_exact

    if not (folder / "ab_report.py").is_file() and not (folder / "ab_report").is_dir():
        fail(expected=f"{folder.name}/ab_report.py (python -m ab_report)", measured="파일이 없습니다",
             hint="lesson.ipynb §15 'A/B 테스트' — ab_report.py 를 만드세요: --metrics-url 의 /metrics 에서 "
                  "llm_experiment_feedback_total 을 읽고 scipy.stats.fisher_exact 로 판단합니다.")
    pages = {
        "clear": {A: (150, 50), B: (100, 100)},
        "swapped": {A: (100, 100), B: (150, 50)},
        "tiny": {A: (9, 1), B: (2, 8)},
        "equal": {A: (500, 500), B: (512, 488)},
        "loose": {A: (128, 72), B: (110, 90)},     # p ≈ 0.083
        "strict": {A: (132, 68), B: (110, 90)},    # p ≈ 0.032
    }
    noise = {"other-exp": {"a": (5, 5), "b": (6, 4), "c": (7, 3)}}
    exposition = {name: xsup.feedback_exposition({**noise, REPORT_EXPERIMENT: c}) for name, c in pages.items()}
    base = ["--experiment", REPORT_EXPERIMENT, "--json"]
    ms = ["--min-samples", str(MIN_SAMPLES)]
    # (이름, 페이지, 추가 인자, 기대 결정, 기대 승자, 설명)
    cases = [
        ("clear", "clear", ms + ["--alpha", "0.01"], "winner", A, "차이가 분명하고 데이터가 충분"),
        ("swapped", "swapped", ms + ["--alpha", "0.01"], "winner", B, "같은 숫자에서 변형 이름만 바꿈"),
        ("tiny", "tiny", ms, "insufficient_data", None, f"변형마다 평가 10개 (< --min-samples {MIN_SAMPLES})"),
        ("equal", "equal", ms, "no_difference", None, "평가 1000개씩, 좋아요 50.0 % 대 51.2 %"),
        ("min_samples", "clear", ["--min-samples", "250", "--alpha", "0.01"], "insufficient_data", None,
         "차이가 분명하지만 변형마다 200개 < --min-samples 250"),
        ("alpha_loose", "loose", ms + ["--alpha", "0.1"], "winner", A, "p ≈ 0.083 < --alpha 0.1"),
        ("alpha_strict", "strict", ms + ["--alpha", "0.02"], "no_difference", None, "p ≈ 0.032 >= --alpha 0.02"),
    ]
    with xsup.ExpositionServer(exposition) as server:
        runs = [(c, [ "--metrics-url", server.url(c[1]), *base, *c[2]]) for c in cases]
        bad_port = harness.free_port()
        extra = [("three_variants", ["--metrics-url", server.url("clear"), "--experiment", "other-exp", "--json"]),
                 ("unreachable", ["--metrics-url", f"http://127.0.0.1:{bad_port}/metrics", *base])]
        jobs = [args for _, args in runs] + [args for _, args in extra]
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(lambda a: xsup.run_ab_report(folder, a), jobs))
    seen = {}
    problems = []
    for (case, _args), run in zip(runs, results[:len(runs)]):
        name, page, args, want, winner, what = case
        data = run.data
        decision = data.get("decision") if data else None
        seen[name] = f"{decision} {data.get('winner') if data else ''}".strip() if data else run.short()
        shown = "python -m ab_report " + " ".join(a if not a.startswith("http") else "<url>" for a in _args)
        if run.returncode != 0 or data is None:
            problems.append(f"{what}: `{shown}` -> {run.short()} (기대: 종료 코드 0, --json 의 JSON)")
            continue
        if decision != want or data.get("winner") != winner:
            problems.append(f"{what}: decision={decision!r}, winner={data.get('winner')!r} "
                            f"(기대 {want!r}, {winner!r})")
            continue
        variants = data.get("variants") if isinstance(data.get("variants"), dict) else {}
        for v, (up, down) in pages[page].items():
            row = variants.get(v) if isinstance(variants.get(v), dict) else {}
            if row.get("up") != up or row.get("down") != down or row.get("n") != up + down:
                problems.append(f"{what}: variants[{v!r}]={row or None} (기대 up {up}, down {down}, n {up + down})")
                break
        if want in ("winner", "no_difference"):
            (ua, da), (ub, db) = pages[page].values()
            p_ref = float(fisher_exact([[ua, da], [ub, db]])[1])
            p = data.get("p_value")
            alpha = float(args[args.index("--alpha") + 1]) if "--alpha" in args else 0.05
            if not isinstance(p, (int, float)) or not 0 <= p <= 1 or (p < alpha) != (want == "winner"):
                problems.append(f"{what}: p_value={p!r} (Fisher 정확검정으로 {p_ref:.4g}, alpha {alpha})")
    for (name, args), run in zip(extra, results[len(runs):]):
        seen[name] = run.short()
        if run.returncode != 2:
            what = ("변형이 세 개인 실험 (두 개만 비교)" if name == "three_variants"
                    else "연결할 수 없는 --metrics-url")
            problems.append(f"{what}: {run.short()} (기대: 한국어 오류와 종료 코드 2)")
    record("ab_report", seen)
    record("ab_report_seconds", round(max((r.seconds for r in results), default=0.0), 1))
    if problems:
        fail(expected="python -m ab_report --metrics-url … --experiment … --json: 데이터가 충분하고 Fisher 정확검정의 "
                      "p < --alpha 일 때만 winner (좋아요 비율이 높은 변형), p >= alpha 면 no_difference, 어느 변형이든 "
                      "평가가 --min-samples 보다 적으면 insufficient_data; 잘못된 입력은 종료 코드 2",
             measured="; ".join(problems[:3]) + (f" 외 {len(problems) - 3}건" if len(problems) > 3 else ""),
             hint="lesson.ipynb §15 'A/B 테스트' — 좋아요 비율이 높다고 바로 승자가 아닙니다. 변형마다 평가가 "
                  "--min-samples 이상인지 먼저 보고, scipy.stats.fisher_exact([[up_a, down_a], [up_b, down_b]]) 의 "
                  "p 값이 --alpha 보다 작을 때만 winner 를 고르세요.")


# =========================================================================== canary (§16)
CANARY = "gemini-3.5-pro"                # CANARY_MODEL
SHARE = 0.2                              # CANARY_SHARE (기본 0.05)
MIN_REQUESTS = 10                        # CANARY_MIN_REQUESTS (기본 20)
ROLLBACK_SLACK = 2                       # 롤백까지 허용하는 카나리 실패 수: MIN_REQUESTS + 이만큼
HEALTHY_N = 300
SHARE_TOL = 0.08                         # 300개에서 약 3.5 표준편차
AFTER_N = 40                             # 롤백 뒤 복제본마다 보내는 요청 (롤백이 없으면 0.8^40 ≈ 1e-4 확률로만 0번)
SHARED_WAIT = 2.5                        # 다른 복제본이 Redis 의 롤백을 읽기까지 기다리는 시간 (캐시 1초 + 여유)


@dataclass
class CanaryFleet:
    a: Any
    b: Any
    c: Any
    client: httpx.Client

    def ask(self, svc, tag: str, client: httpx.Client | None = None) -> osup.Reply:
        return xsup.chat(client or self.client, svc.base_url, SERVICE_KEY, QUESTION, timeout=TIMEOUT, rid=rid(tag))

    def state(self, svc, key: str | None = SERVICE_KEY) -> osup.Reply:
        return xsup.get(self.client, f"{svc.base_url}/canary", key, timeout=5)

    def metrics(self, svc) -> str:
        try:
            return self.client.get(f"{svc.base_url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return ""


@pytest.fixture
def canary_fleet(step_dir, tmp_path_factory, simulator, redis_srv):
    simulator.reset(config=True)
    root = tmp_path_factory.mktemp("step06-canary")
    common = {"CACHE_TTL_SECONDS": "0", "CANARY_MODEL": CANARY, "CANARY_SHARE": str(SHARE),
              "CANARY_MIN_REQUESTS": str(MIN_REQUESTS), "CANARY_WINDOW_SECONDS": "60",
              "CANARY_MAX_ERROR_INCREASE": "0.1", "CANARY_MAX_SCORE_DROP": "1.0", "REDIS_URL": redis_srv.url}
    with ExitStack() as stack:
        envs = [(f"카나리-검사용-{x}", service_env(simulator, root / x, **common)) for x in "ABC"]
        a, b, c = start_services(step_dir, root, stack, envs)
        client = stack.enter_context(httpx.Client())
        yield CanaryFleet(a, b, c, client)
    simulator.reset(config=True)


def state_of(r: osup.Reply) -> Any:
    return xsup.body_field(r, "state")


def is_canary(r: osup.Reply) -> bool:
    return xsup.body_field(r, "model") == CANARY


@check("step06.canary")
def test_canary(canary_fleet, simulator):
    f = canary_fleet
    # 1) 싼 확인: GET /canary (서비스 키 필요) -> model, share, state "active".
    st = f.state(f.a)
    record("probe", f"{st.short()} {json.dumps(st.body, ensure_ascii=False)[:160] if st.status == 200 else ''}")
    if st.status != 200 or not isinstance(st.body, dict) or st.body.get("model") != CANARY \
            or st.body.get("share") != SHARE or state_of(st) != "active":
        fail(expected=f"CANARY_MODEL={CANARY}, CANARY_SHARE={SHARE} 인 서비스의 GET /canary -> 200 "
                      f"{{\"model\": \"{CANARY}\", \"share\": {SHARE}, \"state\": \"active\", ...}}",
             measured=st.short() if st.status != 200 else json.dumps(st.body, ensure_ascii=False)[:200],
             hint="lesson.ipynb §16 '카나리 모델 업데이트' — CANARY_MODEL, CANARY_SHARE 등을 설정으로 읽고, "
                  "GET /canary 가 카나리 상태(model, share, state, reason, canary, baseline)를 돌려주게 하세요.")
    anon = f.state(f.a, key=None)
    if anon.status != 401:
        fail(expected="서비스 키 없는 GET /canary -> 401", measured=anon.short())

    # 2) 건강한 카나리: A, B 에 300개 -> 카나리 비율 ≈ CANARY_SHARE, 롤백 없음.
    before = calls(simulator, CANARY)
    targets = [f.a, f.b] * (HEALTHY_N // 2)
    healthy = xsup.pmap(lambda cl, svc: f.ask(svc, "canary-healthy", client=cl), targets, WORKERS)
    canary_calls = calls(simulator, CANARY) - before
    record("healthy", osup.count_by(healthy))
    not_ok = [r for r in healthy if r.status != 200]
    if not_ok:
        fail(expected=f"카나리 모델이 건강할 때 /chat {HEALTHY_N}개가 모두 200",
             measured=f"{osup.count_by(healthy)}; 예 {not_ok[0].short()}")
    routed = sum(1 for r in healthy if is_canary(r))
    others = {xsup.body_field(r, "model") for r in healthy if not is_canary(r)}
    header_wrong = [r for r in healthy if (r.headers.get("x-canary", "").strip().lower() == "true") != is_canary(r)]
    share = routed / len(healthy)
    record("healthy_canary_share", round(share, 3))
    record("healthy_canary_upstream_calls", canary_calls)
    if abs(share - SHARE) > SHARE_TOL:
        fail(expected=f"CANARY_SHARE={SHARE}: 요청 {HEALTHY_N}개 중 카나리 모델({CANARY})의 답 비율이 "
                      f"{SHARE} ± {SHARE_TOL}",
             measured=f"{share:.3f} ({routed}개)",
             hint="lesson.ipynb §16 '카나리 모델 업데이트' — 요청마다 random.random() < CANARY_SHARE 일 때만 카나리 "
                  "모델로 보내세요. 모두 보내면 카나리가 아니라 전면 교체입니다.")
    if others - {PRIMARY} or header_wrong or canary_calls != routed:
        fail(expected=f"카나리의 답은 model={CANARY} 와 X-Canary: true, 나머지는 model={PRIMARY} (헤더 없음); "
                      "카나리 모델 호출 수 == 카나리 답 수",
             measured=f"다른 모델 {sorted(map(str, others - {PRIMARY}))}, 헤더가 맞지 않는 답 {len(header_wrong)}개, "
                      f"카나리 답 {routed}개, 시뮬레이터의 {CANARY} 호출 {canary_calls}번")
    states = [f.state(svc) for svc in (f.a, f.b)]
    if any(state_of(r) != "active" for r in states):
        # Redis 읽기가 짧은 타임아웃에 걸리면 1초 동안 롤백으로 봄 (fail safe): 그 1초가 지난 뒤 한 번 더 봅니다.
        time.sleep(1.2)
        states = [f.state(svc) for svc in (f.a, f.b)]
    record("healthy_state", [state_of(r) for r in states])
    if any(state_of(r) != "active" for r in states):
        fail(expected="카나리가 건강하면 롤백 없음: A, B 의 GET /canary state=\"active\"",
             measured=", ".join(f"{n}: {r.short() if r.status != 200 else state_of(r)} "
                                f"(reason {xsup.body_field(r, 'reason')!r})" for n, r in zip("AB", states)))
    by_role = Counter()
    for svc in (f.a, f.b):
        for (role,), n in xsup.metric_by(f.metrics(svc), "llm_canary_requests_total", ("role",)).items():
            by_role[role] += n
    record("llm_canary_requests_total", dict(by_role))
    if by_role.get("canary", 0) != routed or by_role.get("baseline", 0) != len(healthy) - routed:
        fail(expected=f"A 와 B 의 llm_canary_requests_total 합: role=\"canary\" {routed}, role=\"baseline\" "
                      f"{len(healthy) - routed} (채점기가 받은 답)",
             measured=f"{dict(by_role) or '시계열 없음'}")

    # 3) 카나리 모델만 503: 복제본 C 에 차례로 보내며 C 의 GET /canary 가 rolled_back 이 될 때까지.
    simulator.configure(fault_models=[CANARY], error_503_rate=1.0)
    sent, failures, rolled, fault_rows = 0, 0, None, []
    try:
        while failures <= MIN_REQUESTS + ROLLBACK_SLACK and sent < 400:
            r = f.ask(f.c, "canary-fault")
            sent += 1
            if r.status != 200:
                failures += 1
                fault_rows.append(r.short())
                st = f.state(f.c)
                if state_of(st) == "rolled_back" and xsup.body_field(st, "reason") == "error_rate":
                    rolled = st
                    break
    finally:
        simulator.configure(fault_models=None, error_503_rate=0.0)
    if rolled is None:
        time.sleep(1.2)   # 상태를 모를 때의 fail safe (1초)가 지나도록
        st = f.state(f.c)
        rolled = st if state_of(st) == "rolled_back" else None
    record("fault_requests", sent)
    record("failures_until_rollback", failures)
    if rolled is None:
        fail(expected=f"카나리 모델이 모두 503 이면 카나리 실패 {MIN_REQUESTS}~{MIN_REQUESTS + ROLLBACK_SLACK}번 안에 "
                      "자동 롤백: C 의 GET /canary state=\"rolled_back\", reason=\"error_rate\"",
             measured=f"요청 {sent}개, 실패 {failures}개 뒤에도 state={state_of(st) or st.short()!r}, "
                      f"reason={xsup.body_field(st, 'reason')!r}"
                      + (f" (실패 예: {fault_rows[0]})" if fault_rows else ""),
             hint="lesson.ipynb §16 '카나리 모델 업데이트' — 결과마다 역할별 창(CANARY_WINDOW_SECONDS)에 성공/실패를 "
                  "넣고, 카나리 결과가 CANARY_MIN_REQUESTS 이상이면 카나리 오류율 > 기준 오류율 + "
                  "CANARY_MAX_ERROR_INCREASE 인지 확인해 롤백하세요.")
    if failures < MIN_REQUESTS:
        fail(expected=f"카나리 결과가 CANARY_MIN_REQUESTS={MIN_REQUESTS} 개 모이기 전에는 판단하지 않음 (실패 몇 번으로 "
                      "롤백하지 않음)",
             measured=f"카나리 실패 {failures}번 만에 롤백")
    if xsup.body_field(rolled, "reason") != "error_rate":
        fail(expected="오류로 롤백하면 GET /canary 의 reason=\"error_rate\"",
             measured=f"reason={xsup.body_field(rolled, 'reason')!r}")
    bound = SHARE * sent + 3 * (sent * SHARE * (1 - SHARE)) ** 0.5 + 2
    if failures > bound:
        fail(expected=f"롤백 전까지 실패한 요청은 카나리 몫만: 요청 {sent}개 중 {bound:.0f}개 이하 (CANARY_SHARE={SHARE})",
             measured=f"실패 {failures}개: {fault_rows[:2]}")

    # 4) 롤백 뒤: C, 그리고 Redis 의 상태를 읽는 A, B 모두 카나리 모델을 부르지 않고, 실패 없음.
    harness.wait_until(lambda: all(state_of(f.state(svc)) == "rolled_back" for svc in (f.a, f.b)), SHARED_WAIT)
    after = {}
    problems = []
    for name, svc in (("C", f.c), ("A", f.a), ("B", f.b)):
        before = calls(simulator, CANARY)
        rs = xsup.pmap(lambda cl, _, svc=svc: f.ask(svc, "canary-after", client=cl), range(AFTER_N), 4)
        n = calls(simulator, CANARY) - before
        after[name] = f"{osup.count_by(rs)}, {CANARY} 호출 {n}번"
        if n or any(r.status != 200 for r in rs):
            problems.append(f"복제본 {name}: {after[name]}")
    record("after_rollback", after)
    if problems:
        shared = any(p.startswith(("복제본 A", "복제본 B")) for p in problems) and not any(
            p.startswith("복제본 C") for p in problems)
        fail(expected=f"롤백 뒤에는 롤백한 복제본 C 도, 다른 복제본 A, B 도 ({SHARED_WAIT}초 안에) {CANARY} 를 한 번도 "
                      f"부르지 않고 요청 {AFTER_N}개씩 모두 200",
             measured="; ".join(problems),
             hint=("lesson.ipynb §16 '카나리 모델 업데이트' — 롤백 상태를 프로세스 메모리에만 두면 다른 복제본은 계속 "
                   "카나리로 보냅니다. REDIS_URL 이 있으면 llm-chat:canary:v1:<모델> 키에 두고 모든 복제본이 읽게 "
                   "하세요 (읽은 값은 1초까지만 캐시).") if shared else None)

    # 5) llm_canary_rollbacks_total: 롤백한 복제본 C 에서 1.
    rb = {n: xsup.metric_sum(f.metrics(svc), "llm_canary_rollbacks_total") for n, svc in
          (("A", f.a), ("B", f.b), ("C", f.c))}
    record("llm_canary_rollbacks_total", rb)
    if rb["C"] != 1 or xsup.metric_sum(f.metrics(f.c), "llm_canary_rollbacks_total", reason="error_rate") != 1:
        fail(expected="롤백한 복제본 C 의 /metrics: llm_canary_rollbacks_total{reason=\"error_rate\"} == 1",
             measured=f"{rb['C']:g}" if rb["C"] else "시계열 없음")
