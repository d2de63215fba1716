"""06단계 단위 테스트: 데드라인, 재시도할 실패와 하지 않을 실패, Fallback 표시, 서킷 브레이커, 키별 한도,
fail open, 부하 차단, /ready. 가짜 LLM 만 씁니다 (네트워크 없음). Redis 가 있으면(redis-server) 진짜 Redis 로
두 복제본이 한도와 응답 id 를 함께 쓰는지도 봅니다 (없으면 그 테스트만 건너뜀)."""

import asyncio
import time

import pybreaker
import pytest
from conftest import FakeLLM
from fastapi.testclient import TestClient
from langchain_core.messages import AIMessage

HEADERS = {"X-API-Key": "test-service-key"}
QUESTION = "MLOps 가 무엇인가요?"


class ScriptedLLM(FakeLLM):
    """시도마다 정해 둔 결과: 예외(클래스나 인스턴스)면 던지고, "hang" 이면 멈추고, AIMessage 면 그것을, 없으면 답."""

    def __init__(self, script: list, delay: float = 0.0):
        super().__init__(default="MLOps 는 머신러닝 운영입니다.")
        self.script = list(script)
        self.attempts = 0
        self.delay = delay

    async def ainvoke(self, messages):
        self.attempts += 1
        step = self.script.pop(0) if self.script else None
        if self.delay:
            await asyncio.sleep(self.delay)
        if step == "hang":
            await asyncio.sleep(60)
        if isinstance(step, BaseException) or (isinstance(step, type) and issubclass(step, BaseException)):
            raise step
        if isinstance(step, AIMessage):
            return step
        return await super().ainvoke(messages)

    async def aclose(self):
        pass


def server_error():
    from google.genai.errors import ServerError

    return ServerError(503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})


def bad_request():
    from langchain_google_genai.chat_models import GoogleInvalidRequestError

    return GoogleInvalidRequestError("API key not valid")


SAFETY = AIMessage(content="", response_metadata={"finish_reason": "SAFETY"})
EMPTY = AIMessage(content="", response_metadata={})


@pytest.fixture
def resilient(service, monkeypatch):
    """Fallback 과 짧은 데드라인을 켠 서비스. (주 모델, Fallback 모델) 가짜를 정하는 함수를 돌려줌."""
    monkeypatch.setattr(service.settings, "fallback_model", "gemini-3.5-flash-lite")
    monkeypatch.setattr(service.settings, "request_deadline_seconds", 1.0)
    monkeypatch.setattr(service.settings, "fallback_reserve_seconds", 0.4)
    monkeypatch.setattr(service.settings, "llm_max_attempts", 3)
    monkeypatch.setattr(service, "PRIMARY_CIRCUIT", pybreaker.CircuitBreaker(fail_max=1000, reset_timeout=10))

    def setup(client, primary, fallback=None):
        service.app.dependency_overrides[service.get_llm] = lambda: primary
        client.app.state.fallback_llm = fallback or ScriptedLLM([])

    return setup


def ask(client, key="test-service-key"):
    started = time.perf_counter()
    r = client.post("/chat", json={"message": QUESTION}, headers={"X-API-Key": key})
    return r, time.perf_counter() - started


# --------------------------------------------------------------------------- 데드라인과 재시도 (§2)

def test_hanging_primary_falls_back_within_deadline_and_is_marked(service, resilient):
    primary, fallback = ScriptedLLM(["hang"] * 5), ScriptedLLM([])
    with TestClient(service.app) as client:
        resilient(client, primary, fallback)
        r, seconds = ask(client)
        metrics = client.get("/metrics").text
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "gemini-3.5-flash-lite" and body["fallback"] is True
    assert r.headers["X-Fallback"] == "gemini-3.5-flash-lite"
    assert seconds < 1.0 + 0.3, seconds  # 데드라인 1초 안에 (주 모델 몫 0.6 초 + Fallback)
    assert primary.attempts == 1 and fallback.attempts == 1
    assert 'llm_fallbacks_total{gen_ai_request_model="gemini-3.5-flash"' in metrics and 'reason="timeout"' in metrics


def test_slow_primary_is_hedged_not_cut(service, resilient):
    """주 모델 몫(0.6 초)이 지나도 진행 중인 시도는 끊지 않고 Fallback 과 함께 기다림: 먼저 온 답(주 모델, 0.7 초)을 씀."""
    primary, fallback = ScriptedLLM([], delay=0.7), ScriptedLLM([], delay=0.35)
    with TestClient(service.app) as client:
        resilient(client, primary, fallback)
        r, seconds = ask(client)
    assert r.status_code == 200 and r.json()["fallback"] is False and r.json()["model"] == "gemini-3.5-flash"
    assert "X-Fallback" not in r.headers
    assert primary.attempts == 1 and fallback.attempts == 1 and seconds < 0.9, seconds


def test_everything_hanging_is_a_504_within_the_deadline(service, resilient):
    with TestClient(service.app) as client:
        resilient(client, ScriptedLLM(["hang"] * 5), ScriptedLLM(["hang"] * 5))
        r, seconds = ask(client)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert seconds < 1.0 + 0.3, seconds


def test_attempts_never_exceed_the_bound(service, resilient):
    """주 모델 LLM_MAX_ATTEMPTS + Fallback LLM_MAX_ATTEMPTS 가 상한 (여기서 3 + 3)."""
    service.settings.request_deadline_seconds = 3.0  # 넉넉한 데드라인: 횟수 상한이 먼저 (resilient 가 되돌림)
    primary, fallback = ScriptedLLM([server_error()] * 10), ScriptedLLM([server_error()] * 10)
    with TestClient(service.app) as client:
        resilient(client, primary, fallback)
        r, seconds = ask(client)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert primary.attempts == 3 and fallback.attempts == 3
    assert seconds < 3.3


def test_backoff_never_sleeps_past_the_deadline(service, resilient, monkeypatch):
    """429 의 RetryInfo(여기 17초)가 남은 시간에 들어가지 않으면 기다리지 않고 멈춤 -> Fallback."""
    from langchain_core.exceptions import ModelRateLimitError

    class RateLimited(ModelRateLimitError):
        pass

    exc = RateLimited("429")
    exc.__cause__ = type("C", (Exception,), {"details": {"error": {"details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}}})()
    primary = ScriptedLLM([exc] * 5)
    with TestClient(service.app) as client:
        resilient(client, primary, ScriptedLLM([]))
        r, seconds = ask(client)
    assert r.status_code == 200 and r.json()["fallback"] is True
    assert primary.attempts == 1 and seconds < 0.5, (primary.attempts, seconds)


# --------------------------------------------------------------------------- 재시도하지 않을 실패 (§4)

def test_bad_request_is_not_retried_and_not_a_500(service, resilient):
    primary, fallback = ScriptedLLM([bad_request()] * 5), ScriptedLLM([])
    with TestClient(service.app) as client:
        resilient(client, primary, fallback)
        r, _ = ask(client)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_bad_request"
    assert primary.attempts == 1 and fallback.attempts == 0


def test_safety_block_is_422_once(service, resilient):
    primary, fallback = ScriptedLLM([SAFETY] * 5), ScriptedLLM([])
    with TestClient(service.app) as client:
        resilient(client, primary, fallback)
        r, _ = ask(client)
    assert r.status_code == 422 and r.json()["error"]["code"] == "content_blocked"
    assert primary.attempts == 1 and fallback.attempts == 0


def test_empty_answer_is_retried_then_502_malformed(service, resilient):
    import json

    malformed = json.JSONDecodeError("Expecting value", "{", 1)
    service.settings.request_deadline_seconds = 3.0
    primary, fallback = ScriptedLLM([EMPTY, malformed, EMPTY]), ScriptedLLM([EMPTY] * 3)
    with TestClient(service.app) as client:
        resilient(client, primary, fallback)
        r, _ = ask(client)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_malformed"
    assert primary.attempts == 3 and fallback.attempts == 3


def test_empty_answer_then_good_answer(service, resilient):
    primary = ScriptedLLM([EMPTY])
    with TestClient(service.app) as client:
        resilient(client, primary)
        r, _ = ask(client)
    assert r.status_code == 200 and r.json()["fallback"] is False and primary.attempts == 2


# --------------------------------------------------------------------------- 서킷 브레이커 (§3)

def test_open_circuit_skips_the_primary(service, resilient, monkeypatch):
    primary, fallback = ScriptedLLM([server_error()] * 100), ScriptedLLM([])
    monkeypatch.setattr(service, "PRIMARY_CIRCUIT", pybreaker.CircuitBreaker(fail_max=2, reset_timeout=30))
    with TestClient(service.app) as client:
        resilient(client, primary, fallback)
        monkeypatch.setattr(service, "PRIMARY_CIRCUIT", pybreaker.CircuitBreaker(fail_max=2, reset_timeout=30))
        first, _ = ask(client)   # 주 모델 2번 실패 -> 회로 열림 -> Fallback
        before = primary.attempts
        second, _ = ask(client)  # 회로가 열려 있으니 주 모델은 부르지 않음
        metrics = client.get("/metrics").text
    assert first.status_code == 200 and second.status_code == 200
    assert before == 2 and primary.attempts == before
    assert second.json()["fallback"] is True and 'reason="circuit_open"' in metrics


def test_open_circuit_without_fallback_is_a_clean_503(service, resilient, monkeypatch):
    monkeypatch.setattr(service.settings, "fallback_model", "")
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=30)
    with TestClient(service.app) as client:
        resilient(client, ScriptedLLM([server_error()] * 10))
        monkeypatch.setattr(service.settings, "fallback_model", "")
        monkeypatch.setattr(service, "PRIMARY_CIRCUIT", breaker)
        ask(client)
        r, _ = ask(client)
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
    assert int(r.headers["Retry-After"]) >= 1


# --------------------------------------------------------------------------- 키별 한도 (§5)

@pytest.fixture
def limited(service, monkeypatch):
    monkeypatch.setattr(service.settings, "rate_limit", "3/minute")
    monkeypatch.setattr(service.settings, "service_api_keys", service.SecretStr("key-b, key-c"))
    with TestClient(service.app) as client:
        yield client


def test_rate_limit_per_key_with_headers(limited):
    codes = [ask(limited)[0] for _ in range(5)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
    ok, over = codes[0], codes[3]
    assert ok.headers["RateLimit-Policy"] == "3;w=60"
    assert ok.headers["RateLimit"].startswith("limit=3, remaining=2, reset=")
    assert over.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert "remaining=0" in over.headers["RateLimit"]
    # 다른 키는 자기 한도 (키 하나 = 클라이언트 하나), 모르는 키는 401 (한도를 세지 않음)
    assert ask(limited, "key-b")[0].status_code == 200
    assert ask(limited, "key-c")[0].status_code == 200
    assert ask(limited, "unknown-key")[0].status_code == 401


def test_limit_key_is_a_hash_not_the_key(service):
    import hashlib

    assert service.resilience.client_id("lab-service-key") == hashlib.sha256(b"lab-service-key").hexdigest()[:16]


def test_redis_outage_fails_open_fast(service):
    """닫힌 포트의 Redis: 한도를 재지 못하면 None (요청 통과), 요청마다 0.2초를 넘게 더하지 않음."""
    limiter = service.resilience.RateLimiter("3/minute", "redis://127.0.0.1:9/0")

    async def run():
        started = time.perf_counter()
        results = [await limiter.hit("k") for _ in range(5)]
        return results, (time.perf_counter() - started) / 5

    results, per_request = asyncio.run(run())
    assert results == [None] * 5 and per_request < 0.2, per_request


def test_redis_outage_serves_requests(service, monkeypatch):
    monkeypatch.setattr(service.settings, "redis_url", "redis://127.0.0.1:9/0")
    monkeypatch.setattr(service.settings, "rate_limit", "1/minute")
    with TestClient(service.app) as client:
        codes = [ask(client)[0].status_code for _ in range(3)]
        metrics = client.get("/metrics").text
        chat = client.post("/chat", json={"message": QUESTION}, headers=HEADERS).json()
        feedback = client.post("/feedback", json={"response_id": chat["response_id"], "rating": "up"}, headers=HEADERS)
    assert codes == [200, 200, 200]
    assert "llm_ratelimit_errors_total" in metrics
    assert feedback.status_code == 200  # Redis 가 없으면 이 복제본의 기록으로


# --------------------------------------------------------------------------- 부하 차단 (§6), 준비 상태 (§8)

def test_load_shedding_answers_503_overloaded_at_once(service, resilient, monkeypatch):
    import concurrent.futures

    monkeypatch.setattr(service.settings, "max_in_flight", 2)
    with TestClient(service.app) as client:
        resilient(client, ScriptedLLM([], delay=0.3))
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: ask(client), range(6)))
        health = client.get("/health").status_code
    shed = [(r, s) for r, s in replies if r.status_code == 503]
    assert sum(r.status_code == 200 for r, _ in replies) >= 2 and shed, [r.status_code for r, _ in replies]
    for r, seconds in shed:
        assert r.json()["error"]["code"] == "overloaded" and r.headers["Retry-After"] == "1" and seconds < 0.25
    assert health == 200


def test_ready_until_shutdown(service):
    with TestClient(service.app) as client:
        assert client.get("/ready").json() == {"status": "ready"}
        client.app.state.ready = False  # SIGTERM 처리기나 lifespan 종료가 하는 일
        r = client.get("/ready")
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"


# --------------------------------------------------------------------------- 진짜 Redis: 복제본 두 개 (§5, §7)

@pytest.fixture(scope="module")
def redis_url():
    try:
        from coursekit.redis_server import RedisServer, find_redis
    except ImportError:
        pytest.skip("coursekit.redis_server 가 없습니다 (코스 저장소 밖)")
    if find_redis() is None:
        pytest.skip("redis-server 가 없습니다")
    with RedisServer() as server:
        yield server.url


def test_two_replicas_share_one_limit_in_redis(service, redis_url):
    async def run():
        replica_a = service.resilience.RateLimiter("5/minute", redis_url)
        replica_b = service.resilience.RateLimiter("5/minute", redis_url)
        decisions = [await (replica_a if i % 2 else replica_b).hit("shared-key") for i in range(10)]
        other = await replica_a.hit("other-key")
        await replica_a.aclose()
        await replica_b.aclose()
        return decisions, other

    decisions, other = asyncio.run(run())
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 5
    assert other.allowed and other.remaining == 4


def test_feedback_ids_are_shared_across_replicas(service, redis_url):
    async def run():
        a, b = service.resilience.SharedResponses(redis_url), service.resilience.SharedResponses(redis_url)
        rid = await a.issue()
        outcomes = [await b.claim(rid), await a.claim(rid), await b.claim("0" * 32)]
        await a.aclose()
        await b.aclose()
        return outcomes

    assert asyncio.run(run()) == ["ok", "exists", "unknown"]


def test_limit_counts_again_right_after_redis_restart(service):
    """Redis 가 같은 포트로 다시 뜨면 바로 다음 요청부터 셈: 끊긴 연결은 한 번 다시 연결 (fail open 은 장애 동안만)."""
    try:
        from coursekit.redis_server import RedisServer, find_redis
    except ImportError:
        pytest.skip("coursekit.redis_server 가 없습니다 (코스 저장소 밖)")
    if find_redis() is None:
        pytest.skip("redis-server 가 없습니다")

    async def run(server):
        limiter = service.resilience.RateLimiter("5/minute", server.url)
        before = await limiter.hit("k")
        server.stop()
        during = await limiter.hit("k")
        server.start()
        after = [await limiter.hit("k") for _ in range(6)]
        await limiter.aclose()
        return before, during, after

    with RedisServer() as server:
        before, during, after = asyncio.run(run(server))
    assert before.allowed and during is None
    assert None not in after, after  # 다시 뜬 Redis 의 첫 요청도 셈 (끊긴 연결 때문에 통과시키지 않음)
    assert [d.allowed for d in after] == [True] * 5 + [False]


def test_frozen_redis_costs_one_timeout_per_request_not_two(service):
    """멈춘(SIGSTOP) Redis: 요청 하나는 한도에서만 시간 초과(0.1 초)를 기다리고, 응답 id 는 건너뜀 (0.2 초가 아님)."""
    try:
        from coursekit.redis_server import RedisServer, find_redis
    except ImportError:
        pytest.skip("coursekit.redis_server 가 없습니다 (코스 저장소 밖)")
    if find_redis() is None:
        pytest.skip("redis-server 가 없습니다")

    async def one_request(limiter, shared):  # 요청 하나 = 작업 하나 (contextvars 도 요청마다)
        started = time.perf_counter()
        decision = await limiter.hit("k")
        await shared.issue()
        return decision, time.perf_counter() - started

    async def run(server):
        limiter = service.resilience.RateLimiter("100/minute", server.url)
        shared = service.resilience.SharedResponses(server.url)
        await limiter.hit("k")
        server.freeze()
        results = [await asyncio.create_task(one_request(limiter, shared)) for _ in range(3)]
        server.thaw()
        after = await asyncio.create_task(one_request(limiter, shared))
        await limiter.aclose()
        await shared.aclose()
        return results, after

    with RedisServer() as server:
        results, after = asyncio.run(run(server))
    assert [d for d, _ in results] == [None] * 3
    assert all(seconds < 0.17 for _, seconds in results), results
    assert after[0] is not None  # 다음 요청은 다시 Redis 로 (건너뛰기는 요청 하나 안에서만)


def test_extra_client_keys_are_scrubbed_from_sentry_events(tmp_path):
    """SERVICE_API_KEYS 의 키도 Sentry 이벤트에서 가릴 값 (05단계의 scrub 목록)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "SERVICE_API_KEYS": "extra-key-one, extra-key-two", "LOG_DIR": str(tmp_path)}
    code = "import main, observability; print(sorted(k for k in observability._secrets if k.startswith('extra-')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "['extra-key-one', 'extra-key-two']", out.stderr[-2000:]
