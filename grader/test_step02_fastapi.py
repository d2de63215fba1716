"""Step 02 채점: FastAPI 서버 구축.

학습자의 서비스를 실제 uvicorn 프로세스로 띄우고 (작업 폴더 = 단계 폴더), 채점기가 띄운
Gemini 시뮬레이터를 뒤에 두고 HTTP 로 검사합니다. 계약은 docs 의 '서비스 계약' 페이지에 있습니다.
"""

from __future__ import annotations

import json
import secrets

import httpx
import pytest

from coursekit.simulator.models import judge_models
from grader.harness import blocked, check, copy_step, fail, record, run_locust, run_service

STEP = "step02"

# 채점은 기본값이 아닌 설정으로 합니다: 모델 이름이나 글자 수 상한을 코드에 박아 둔 서비스는
# 설정을 읽는 서비스와 다르게 동작해서 드러납니다 (coursekit/data/models.toml 의 다른 프로필).
DEFAULT_MODEL = "gemini-3.5-flash"
MODEL = "gemini-3.5-flash-lite"
DOTENV_MODEL = "gemini-2.0-flash-lite"  # .env 파일로만 설정하는 실행 (step02.settings)
DEFAULT_MAX_CHARS = 4000
MAX_CHARS = 1500          # MAX_MESSAGE_CHARS given to the service
DOTENV_MAX_CHARS = 700
MAX_BODY_BYTES = 64 * 1024
MAX_ATTEMPTS = 2          # LLM_MAX_ATTEMPTS given to the service
LLM_TIMEOUT_SECONDS = 2   # LLM_TIMEOUT_SECONDS of the service under fault injection (fast timeout check)
LOAD_TIMEOUT_SECONDS = 10 # ... and under load: the contract default, above the simulator's latency tail
P95_LIMIT_SECONDS = 3.0   # 체크리스트: 응답 시간 < 3초
LOAD_USERS = 50
LOAD_SECONDS = 12
SMALL_USERS = 5
SMALL_SECONDS = 8
MIN_SCALING = 3.0         # 사용자 10배 -> 성공 처리량 최소 3배
QUESTION = "하늘클라우드 요금제는 어떻게 되나요?"

SERVICE_KEY = "svc-" + secrets.token_hex(16)
GOOGLE_KEY = "grader-gemini-" + secrets.token_hex(8)

# 오류 응답에 보이면 안 되는 것들: 스택 트레이스, SDK 예외 문구 (str(exc) 의 "500 INTERNAL. {...}",
# "503 UNAVAILABLE" 등 Gemini 의 상태 이름과 메시지), 깨진 응답의 JSON 파서 문구, 비밀 값.
LEAK_MARKERS = ["Traceback", 'File "', "RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "google.genai", "httpx.",
                "ReadTimeout", "httpx2", "langchain", "ServerError", "ClientError", "RateLimit", "x-goog-api-key",
                "An internal error has occurred", "The model is overloaded", "Resource has been exhausted",
                "generativelanguage", "JSONDecodeError", "Unterminated string", "Expecting value",
                "ValidationError", "'status':"]


def service_env(simulator, timeout_seconds: float) -> dict[str, str]:
    """Every setting of the contract, pinned (never the learner's .env or shell; see copy_step)."""
    return {
        "SERVICE_API_KEY": SERVICE_KEY,
        "GOOGLE_API_KEY": GOOGLE_KEY,
        "GOOGLE_GEMINI_BASE_URL": simulator.base_url,
        "LLM_MODEL": MODEL,
        "LLM_TIMEOUT_SECONDS": str(timeout_seconds),
        "LLM_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "MAX_MESSAGE_CHARS": str(MAX_CHARS),
    }


@pytest.fixture(scope="module")
def graded_dir(step_dir, tmp_path_factory):
    """A copy of the step folder without the learner's .env (and caches): a .env left in the
    folder (e.g. MAX_MESSAGE_CHARS=100000) must not change the contract under test."""
    return copy_step(step_dir, tmp_path_factory.mktemp("step02"))


@pytest.fixture(scope="module")
def service(graded_dir, simulator):
    with run_service(graded_dir, env=service_env(simulator, LLM_TIMEOUT_SECONDS),
                     name=f"{graded_dir.name} (기능 검사용)") as svc:
        yield svc


@pytest.fixture(scope="module")
def load_service(graded_dir, simulator):
    """A second instance for the load checks: with a 2 s timeout, the realistic latency tail
    (p99 about 3 s) would turn a few requests of a correct service into 504s."""
    with run_service(graded_dir, env=service_env(simulator, LOAD_TIMEOUT_SECONDS),
                     name=f"{graded_dir.name} (부하 테스트용)") as svc:
        yield svc


def post_chat(svc, payload, key: str | None = SERVICE_KEY, timeout: float = 20.0, **kw) -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    headers.update(kw.pop("headers", {}))
    try:
        if not isinstance(payload, (dict, list)):  # bytes, str or a generator (chunked body)
            headers.setdefault("Content-Type", "application/json")
            return httpx.post(f"{svc.base_url}/chat", content=payload, headers=headers, timeout=timeout, **kw)
        return httpx.post(f"{svc.base_url}/chat", json=payload, headers=headers, timeout=timeout, **kw)
    except httpx.TimeoutException:
        fail(expected=f"{timeout:.0f}초 안에 응답", measured="응답 없음 (시간 초과)")
    except httpx.TransportError as exc:
        fail(expected="서비스가 요청에 응답", measured=f"연결 오류: {type(exc).__name__}",
             detail="서비스 프로세스가 죽었을 수 있습니다. 로그를 확인하세요." if not svc.alive else None)


def short(r: httpx.Response, n: int = 160) -> str:
    text = r.text.replace("\n", " ")
    return f"HTTP {r.status_code} {text[:n]}{'…' if len(text) > n else ''}"


def json_object(r: httpx.Response) -> dict:
    """The response body as a JSON object, or a failed check saying what came instead."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        fail(expected="JSON 객체 응답", measured=short(r))
    return body


def error_code(r: httpx.Response) -> str | None:
    try:
        body = r.json()
    except ValueError:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    return err.get("code") if isinstance(err, dict) else None


def require_ok(svc):
    """A check that rejects bad input must also accept good input (else it proves nothing)."""
    r = post_chat(svc, {"message": QUESTION})
    if r.status_code != 200:
        blocked("step02.contract", measured=f'올바른 요청 {{"message": "..."}} 와 올바른 X-API-Key 에 {short(r)}')
    return r


# --------------------------------------------------------------------------- contract
@check("step02.contract")
def test_chat_contract(service, sim):
    sim.reset()
    r = post_chat(service, {"message": QUESTION})
    record("status", r.status_code)
    if r.status_code != 200:
        fail(expected='POST /chat, JSON 본문 {"message": "..."}, 헤더 X-API-Key -> 200', measured=short(r))
    body = json_object(r)
    problems = []
    if not isinstance(body.get("response"), str) or not body.get("response", "").strip():
        problems.append('"response": 비어 있지 않은 문자열')
    if body.get("model") != MODEL:
        problems.append(f'"model": "{MODEL}" (LLM_MODEL 설정값), 받은 값 {body.get("model")!r}')
    usage = body.get("usage")
    keys = ("input_tokens", "output_tokens", "total_tokens")
    if not isinstance(usage, dict) or not all(isinstance(usage.get(k), int) for k in keys):
        problems.append('"usage": {"input_tokens": int, "output_tokens": int, "total_tokens": int}')
    else:
        # the answering model's tokens only: a later step's service may also call a judge model (step 04)
        tokens = sim.stats().get("tokens_by_model", {}).get(MODEL, {})
        record("usage", usage)
        if usage["input_tokens"] != tokens.get("input") or usage["output_tokens"] != tokens.get("output"):
            problems.append(
                f"usage 는 LLM 응답의 usage_metadata 값이어야 함 (시뮬레이터 집계: 입력 {tokens.get('input')}, "
                f"출력 {tokens.get('output')} / 응답: 입력 {usage['input_tokens']}, 출력 {usage['output_tokens']})"
            )
    if problems:
        fail(expected="응답 필드: " + "; ".join(problems), measured=short(r, 300))
    require_configured_model(sim, MODEL, "LLM_MODEL")


def answer_calls(sim) -> int:
    """Upstream calls since the last reset, without a judge model's: from step 04 on the service samples
    answers for an LLM-as-a-judge in the background, and such a call may land after the next check reset
    the counters (it is not the answering call a check counts)."""
    judges = set(judge_models())
    return sum(int(v) for k, v in sim.stats().get("by_model", {}).items() if k not in judges)


def require_configured_model(sim, model: str, where: str) -> None:
    """The simulator must have been called with the configured model, not a name in the code."""
    # a judge model's calls (LLM-as-a-judge, step 04 onwards) are not the answering call checked here
    by_model = {k: v for k, v in sim.stats().get("by_model", {}).items() if k not in judge_models()}
    record("upstream_models", by_model)
    if set(by_model) != {model}:
        seen = ", ".join(f"{k} x{v}" for k, v in by_model.items()) or "호출 없음"
        fail(expected=f"LLM 을 설정된 모델 {model} ({where}) 로 호출", measured=f"시뮬레이터가 받은 모델: {seen}",
             hint="lesson.ipynb §4 '타임아웃과 재시도 한도' — 모델 이름을 코드에 쓰지 말고 "
                  "`ChatGoogleGenerativeAI(model=settings.llm_model, ...)` 처럼 설정에서 넘기세요.")


@check("step02.health")
def test_health(service, sim):
    sim.reset()
    results = []
    for _ in range(3):
        try:
            results.append(httpx.get(f"{service.base_url}/health", timeout=5))
        except httpx.HTTPError as exc:
            fail(expected="GET /health 가 5초 안에 응답", measured=type(exc).__name__)
    r = results[-1]
    calls = answer_calls(sim)
    record("upstream_calls", calls)
    if r.status_code != 200:
        fail(expected="GET /health (인증 없이) -> 200", measured=short(r))
    body = json_object(r)
    if body.get("status") != "ok" or body.get("model") != MODEL:
        fail(expected=f'{{"status": "ok", "model": "{MODEL}"}} (설정된 모델 이름 포함)', measured=short(r))
    if calls:
        fail(expected="/health 는 LLM 을 호출하지 않음 (업스트림 호출 0번)", measured=f"/health 3번에 업스트림 호출 {calls}번")


# --------------------------------------------------------------------------- input
def chunked(data: bytes, size: int = 8192):
    """A request body without Content-Length (Transfer-Encoding: chunked)."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


@check("step02.validation")
def test_validation(service, sim):
    require_ok(service)
    # 계약: 형식이 잘못된 본문은 모두 422 (OpenAPI 문서에 있는 상태), 64 KiB 넘는 본문은 413.
    cases = {
        "빈 메시지": {"message": ""},
        "공백뿐인 메시지": {"message": "   \n\t "},
        f"너무 긴 메시지 ({MAX_CHARS + 1}자, MAX_MESSAGE_CHARS={MAX_CHARS})": {"message": "가" * (MAX_CHARS + 1)},
        f"너무 긴 메시지 ({DEFAULT_MAX_CHARS + 1}자)": {"message": "가" * (DEFAULT_MAX_CHARS + 1)},
        "숫자 타입": {"message": 123},
        "리스트 타입": {"message": ["안녕"]},
        "message 필드 없음": {},
        "알 수 없는 필드": {"message": "안녕", "admin": True},
        "JSON 이 아닌 본문": b"not json {",
        "UTF-8 이 아닌 본문": b'{"message": "\xff\xfe"}',
    }
    huge = json.dumps({"message": "가" * (1024 * 1024 // 3)}).encode()  # ~1 MiB
    over = json.dumps({"message": "a" * (MAX_BODY_BYTES + 1024)}).encode()  # 65 KiB, 64 KiB 바로 위
    sim.reset()
    seen, bad, shapes = {}, [], []
    for name, payload in cases.items():
        r = post_chat(service, payload)
        seen[name] = r.status_code
        if r.status_code != 422:
            bad.append(f"{name} -> {r.status_code}")
    # 선언된 Content-Length 가 상한을 넘으면 FastAPI(Starlette) 의 내장 제한은 앱의 예외 핸들러를 거치지
    # 않고 text/plain "Content Too Large" 로 답합니다 (앱이 보낸 응답도 그것으로 바꿈): 상태만 봅니다.
    # chunked 본문은 읽는 도중에 413 예외가 나서 앱의 핸들러를 거치므로 계약의 JSON 모양까지 봅니다.
    for name, payload, shape in (
        ("1 MiB 본문 (Content-Length)", huge, False),
        ("65 KiB 본문 (Content-Length 없이 chunked 전송)", chunked(over), True),
    ):
        r = post_chat(service, payload)
        seen[name] = r.status_code
        if r.status_code != 413:
            bad.append(f"{name} -> {r.status_code} (413 이어야 함: 본문 크기 상한 64 KiB)")
        elif shape and error_code(r) != "payload_too_large":
            shapes.append(f"{name}: {short(r)}")
    calls = answer_calls(sim)
    record("statuses", seen)
    record("upstream_calls", calls)
    if bad:
        fail(expected="형식이 잘못된 본문은 모두 422, 64 KiB 넘는 본문은 (Content-Length 가 없어도) 413",
             measured=", ".join(bad), detail="전체 결과: " + ", ".join(f"{k}={v}" for k, v in seen.items()))
    if shapes:
        fail(expected='413 응답 본문도 {"error": {"code": "payload_too_large", "message": "..."}}',
             measured="; ".join(shapes),
             hint="lesson.ipynb §2 '요청/응답 모델' — 본문 크기 제한이 내는 413 도 예외 핸들러에서 "
                  "다른 오류와 같은 ErrorResponse 모양으로 바꾸세요.")
    if calls:
        fail(expected="잘못된 입력으로는 LLM 을 호출하지 않음", measured=f"업스트림 호출 {calls}번")
    # 상한은 설정값: 딱 MAX_MESSAGE_CHARS 글자는 받아야 합니다 (더 작은 수를 코드에 박아 두지 않았는지).
    r = post_chat(service, {"message": "가" * MAX_CHARS})
    record("at_limit_status", r.status_code)
    if r.status_code != 200:
        fail(expected=f"딱 {MAX_CHARS}자 (MAX_MESSAGE_CHARS={MAX_CHARS}) 메시지는 200", measured=short(r),
             hint="lesson.ipynb §2 — 글자 수 상한은 `max_length=settings.max_message_chars` 처럼 설정에서 읽으세요.")


# --------------------------------------------------------------------------- auth
@check("step02.auth")
def test_auth(service, sim):
    require_ok(service)
    wrong = "wrong-" + secrets.token_hex(12)
    cases = {
        "X-API-Key 없음": None,
        "틀린 키": wrong,
        "빈 키": "",
        "올바른 키의 앞부분": SERVICE_KEY[:-4],
        "올바른 키 + 덧붙임": SERVICE_KEY + "x",
    }
    bad, leaks, seen = [], [], {}
    for name, key in cases.items():
        r = post_chat(service, {"message": QUESTION}, key=key)
        seen[name] = r.status_code
        if r.status_code != 401:
            bad.append(f"{name} -> {r.status_code}")
        text = r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items())
        for secret in {SERVICE_KEY, SERVICE_KEY[:-4], wrong, GOOGLE_KEY}:
            if secret and secret in text:
                leaks.append(f"{name}: 응답에 키 값이 보임")
        if r.status_code == 401 and error_code(r) is None:
            bad.append(f'{name}: 401 본문이 {{"error": {{"code": ..., "message": ...}}}} 형식이 아님')
    record("statuses", seen)
    if bad:
        fail(expected="X-API-Key 가 없거나 틀리면 401 과 JSON 오류", measured=", ".join(bad))
    if leaks:
        fail(expected="응답(본문, 헤더)에 키 값이 나타나지 않음", measured=", ".join(sorted(set(leaks))))


# --------------------------------------------------------------------------- settings
# 연결을 모두 닫힌 포트로 보내는 프록시: base_url 을 무시하는 클라이언트는 Google 로 가지 못하고 바로 실패합니다.
NO_INTERNET = {name: "http://127.0.0.1:9" for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY",
                                                       "https_proxy", "http_proxy", "all_proxy")}
NO_INTERNET.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})


@check("step02.settings")
def test_settings_from_dotenv_only(step_dir, simulator, sim, tmp_path):
    """README 대로 `cp .env.example .env` 만 하고 실행한 경우: 설정이 환경 변수에는 없고 .env 에만 있습니다."""
    folder = copy_step(step_dir, tmp_path)
    service_key = "dotenv-svc-" + secrets.token_hex(12)
    google_key = "dotenv-gemini-" + secrets.token_hex(8)
    dotenv = {
        "GOOGLE_API_KEY": google_key,
        "GOOGLE_GEMINI_BASE_URL": simulator.base_url,
        "SERVICE_API_KEY": service_key,
        "LLM_MODEL": DOTENV_MODEL,
        "LLM_TIMEOUT_SECONDS": "5",
        "LLM_MAX_ATTEMPTS": "1",
        "MAX_MESSAGE_CHARS": str(DOTENV_MAX_CHARS),
    }
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()), encoding="utf-8")
    sim.reset()
    with run_service(folder, env=NO_INTERNET, name=f"{folder.name} (.env 로만 설정)") as svc:
        r = post_chat(svc, {"message": QUESTION}, key=service_key)
        calls = answer_calls(sim)
        record("status", r.status_code)
        record("upstream_calls", calls)
        if r.status_code != 200:
            why = ("시뮬레이터가 요청을 한 번도 받지 못함: .env 의 GOOGLE_GEMINI_BASE_URL 이 클라이언트에 전달되지 않음"
                   if calls == 0 else f"시뮬레이터 호출 {calls}번")
            fail(expected="설정이 .env 파일에만 있을 때 (환경 변수 없음) POST /chat -> 200",
                 measured=f"{short(r)} ({why})")
        stats = sim.stats()
        keys = stats.get("by_key", {})
        record("upstream_keys", len(keys))
        if set(keys) != {google_key}:
            fail(expected=".env 의 GOOGLE_API_KEY 로 LLM 을 호출",
                 measured="시뮬레이터가 받은 키가 .env 의 값과 다름" if keys else "키 없이 호출됨")
        require_configured_model(sim, DOTENV_MODEL, ".env 의 LLM_MODEL")
        r = post_chat(svc, {"message": "가" * (DOTENV_MAX_CHARS + 1)}, key=service_key)
        if r.status_code != 422:
            fail(expected=f".env 의 MAX_MESSAGE_CHARS={DOTENV_MAX_CHARS} 보다 긴 메시지 -> 422", measured=short(r))


# --------------------------------------------------------------------------- upstream
UPSTREAM_CASES = {
    "429": ({"error_429_rate": 1.0}, 503, "upstream_rate_limited", "업스트림 429 (RESOURCE_EXHAUSTED)"),
    "500": ({"error_500_rate": 1.0}, 502, "upstream_error", "업스트림 500"),
    "503": ({"error_503_rate": 1.0}, 502, "upstream_error", "업스트림 503 (UNAVAILABLE)"),
    "timeout": ({"hang_rate": 1.0, "hang_seconds": 6.0}, 504, "upstream_timeout",
                f"업스트림 응답 없음 (LLM_TIMEOUT_SECONDS={LLM_TIMEOUT_SECONDS})"),
    # HTTP 200 인데 본문이 깨진 응답: SDK 가 예상하지 못한 예외를 냅니다 -> 모든 예외를 잡는 핸들러의 500.
    "malformed": ({"malformed_rate": 1.0}, 500, "internal_error", "업스트림 200 이지만 본문이 깨진 응답 (예상하지 못한 예외)"),
}
UPSTREAM_HINTS = {
    "malformed": "lesson.ipynb §5 '업스트림 오류 다루기' — 예상하지 못한 예외도 `@app.exception_handler(Exception)` "
                 "으로 잡아 500 internal_error JSON 으로 바꾸세요. 트레이스는 응답이 아니라 서버 로그에만 남깁니다.",
}


@check("step02.upstream_errors")
@pytest.mark.parametrize("kind", list(UPSTREAM_CASES))
def test_upstream_errors(service, sim, kind):
    faults, status, code, what = UPSTREAM_CASES[kind]
    require_ok(service)
    sim.configure(**faults)
    r = post_chat(service, {"message": QUESTION}, timeout=30)
    sim.configure(**{k: (0.0 if k.endswith("rate") else v) for k, v in faults.items()})
    record(f"{kind}_status", r.status_code)
    expected = f'{what} -> {status} 와 {{"error": {{"code": "{code}", "message": "..."}}}}'
    if r.status_code != status or error_code(r) != code:
        fail(expected=expected, measured=short(r), hint=UPSTREAM_HINTS.get(kind))
    text = r.text
    leaked = [m for m in LEAK_MARKERS if m in text] + [
        name for name, secret in (("GOOGLE_API_KEY", GOOGLE_KEY), ("SERVICE_API_KEY", SERVICE_KEY)) if secret in text
    ]
    if leaked:
        fail(expected="오류 본문에 스택 트레이스, SDK 예외 문구, 키 값이 없음",
             measured="보인 것: " + ", ".join(leaked), detail=short(r, 300),
             hint="lesson.ipynb §5 '업스트림 오류 다루기' — 오류 메시지는 직접 쓴 한국어 문장으로 두고, "
                  "`str(exc)` 나 트레이스는 응답이 아니라 서버 로그에만 남기세요.")
    if kind == "429":
        retry_after = r.headers.get("Retry-After", "")
        if not retry_after.isdigit():
            fail(expected="503 응답에 Retry-After 헤더 (초, 정수)", measured=f"Retry-After={retry_after or '없음'}",
                 hint="lesson.ipynb §5 '업스트림 오류 다루기' — 429 를 503 으로 바꿀 때 "
                      "`headers={\"Retry-After\": ...}` 를 붙이세요. 초는 Gemini 429 응답의 RetryInfo.retryDelay 에 있습니다.")


@check("step02.retry_bound")
def test_retry_bound(service, sim):
    sim.configure(error_503_rate=1.0)
    sim.reset()
    limit = 12.0
    try:
        r = httpx.post(f"{service.base_url}/chat", json={"message": QUESTION},
                       headers={"X-API-Key": SERVICE_KEY}, timeout=limit)
        status = str(r.status_code)
    except httpx.TimeoutException:
        status = f"{limit:.0f}초 안에 응답 없음"
    calls = answer_calls(sim)
    sim.configure(error_503_rate=0.0)
    record("upstream_attempts", calls)
    record("limit", MAX_ATTEMPTS)
    if calls == 0:
        blocked("step02.contract", measured=f"POST /chat 이 LLM 을 한 번도 호출하지 않음 (응답 {status})")
    if calls > MAX_ATTEMPTS:
        fail(expected=f"업스트림이 계속 503 일 때 요청 하나당 시도 {MAX_ATTEMPTS}번 이하 (LLM_MAX_ATTEMPTS={MAX_ATTEMPTS})",
             measured=f"{calls}번 시도 (응답: {status})")


# --------------------------------------------------------------------------- load
def _load(simulator, service, users: int, seconds: int):
    # 요청 하나도 성공하지 못하는 서비스에 부하를 거는 것은 의미가 없습니다: 먼저 계약을 확인합니다.
    probe = post_chat(service, {"message": QUESTION})
    if probe.status_code != 200:
        blocked("step02.contract", measured=f"부하 테스트 전 확인 요청 POST /chat -> {short(probe)}",
                detail="요청 하나도 성공하지 못하는 서비스에는 부하 테스트를 하지 않습니다.")
    simulator.configure(latency="realistic")
    try:
        return run_locust("chat.py", service.base_url, users=users, spawn_rate=users, run_time_s=seconds,
                          env={"GRADER_SERVICE_KEY": SERVICE_KEY})
    finally:
        simulator.configure(latency="zero")


@pytest.fixture(scope="module")
def load_5(simulator, load_service):
    return _load(simulator, load_service, SMALL_USERS, SMALL_SECONDS)


@pytest.fixture(scope="module")
def load_50(simulator, load_service, load_5):
    # The small run goes first: a blocking service still works through the backlog of a big
    # run after Locust stops, which would make a later small run look slow and the ratio large.
    return _load(simulator, load_service, LOAD_USERS, LOAD_SECONDS)


@check("step02.latency_p95")
def test_latency_p95_under_load(load_50):
    res = load_50
    print(res.summary())
    for k in ("requests", "failures", "rps", "p50", "p95", "p99"):
        record(k if k in ("requests", "failures", "rps") else f"{k}_seconds", getattr(res, k))
    if res.requests == 0:
        fail(expected=f"동시 사용자 {LOAD_USERS}명의 요청 처리", measured="완료된 요청 0개")
    if res.failures:
        fail(expected=f"동시 사용자 {LOAD_USERS}명에서 실패 0개", measured=res.summary())
    if not res.p95 < P95_LIMIT_SECONDS:
        fail(expected=f"동시 사용자 {LOAD_USERS}명에서 p95 < {P95_LIMIT_SECONDS:.0f}초",
             measured=f"p95 {res.p95:.2f}초 ({res.summary()})")


@check("step02.throughput")
def test_throughput_scales(load_5, load_50):
    ok_small = (load_5.requests - load_5.failures) / load_5.run_time_s
    ok_large = (load_50.requests - load_50.failures) / load_50.run_time_s
    ratio = ok_large / ok_small if ok_small else 0.0
    print(f"성공 처리량: {SMALL_USERS}명 {ok_small:.1f} req/s, {LOAD_USERS}명 {ok_large:.1f} req/s, 배율 {ratio:.1f}")
    record("ok_rps_small", round(ok_small, 2))
    record("ok_rps_large", round(ok_large, 2))
    record("ratio", round(ratio, 2))
    if ok_small == 0 or ok_large == 0:
        fail(expected="부하 중 성공한 요청 (HTTP 200)",
             measured=f"{SMALL_USERS}명: {load_5.summary()} / {LOAD_USERS}명: {load_50.summary()}")
    if ratio < MIN_SCALING:
        fail(expected=f"사용자 {SMALL_USERS}명 -> {LOAD_USERS}명에서 성공 처리량 {MIN_SCALING:.0f}배 이상",
             measured=f"{ok_small:.1f} -> {ok_large:.1f} req/s ({ratio:.1f}배)")
