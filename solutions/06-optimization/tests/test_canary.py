"""06단계 2부 단위 테스트 (TODO 24, lesson §16 '카나리 모델 업데이트'): 라우팅 몫, 결과의 창(가짜 시계), 롤백 규칙
(최소 요청 수 전에는 판정하지 않음, 오류율, 판정 점수, 창이 지난 결과), 롤백 로그 한 줄, 그리고 진짜 redis-server 하나를
함께 쓰는 Canary 두 개 (한쪽의 롤백을 다른 쪽이 봄, Redis 가 멈추면 롤백된 것으로 봄). 네트워크도 LLM 도 쓰지 않습니다."""

import asyncio
import json
import random

import canary as canary_module
import pytest
from canary import Canary

MODEL = "gemini-3.5-pro"


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rollbacks:
    """canary.logger 대신: warning 호출을 모읍니다 (structlog 설정과 관계없이)."""

    def __init__(self):
        self.lines: list[tuple[str, dict]] = []

    def warning(self, event, **fields):
        self.lines.append((event, fields))


@pytest.fixture
def log(monkeypatch):
    rollbacks = Rollbacks()
    monkeypatch.setattr(canary_module, "logger", rollbacks)
    return rollbacks


def make(clock=None, **kwargs) -> Canary:
    options = {"min_requests": 10, "window_seconds": 60.0, "max_error_increase": 0.05, "max_score_drop": 0.5}
    options.update(kwargs)
    return Canary(MODEL, 0.2, clock=clock or Clock(), **options)


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------- 라우팅
def test_off_when_no_model():
    c = Canary("", 0.2)
    assert not c.enabled
    assert run(c.should_route()) is False
    c.record("canary", False)
    assert run(c.check()) is None
    assert run(c.state())["state"] == "off" and run(c.state())["model"] is None


def test_routes_the_configured_share():
    rng = random.Random(7)
    c = Canary(MODEL, 0.2, rng=rng.random)
    routed = sum(run_many(c, 20000))
    assert abs(routed / 20000 - 0.2) <= 0.01, routed


def run_many(c: Canary, n: int) -> list[bool]:
    async def go():
        return [await c.should_route() for _ in range(n)]

    return asyncio.run(go())


def test_bad_role_is_refused():
    with pytest.raises(ValueError):
        make().record("primary", True)


# --------------------------------------------------------------------------- 규칙
def test_no_verdict_before_min_requests(log):
    c = make()
    for _ in range(9):
        c.record("canary", False)
        assert run(c.check()) is None
    assert run(c.state())["state"] == "active"
    c.record("canary", False)
    assert run(c.check()) == "error_rate"
    assert log.lines and log.lines[0][0] == "canary_rollback"


def test_rollback_on_error_rate_stops_routing_and_logs_one_line(log):
    c = Canary(MODEL, 0.999, min_requests=10, window_seconds=60, clock=Clock(), rng=lambda: 0.0)
    for _ in range(30):
        c.record("baseline", True)
    for i in range(10):
        c.record("canary", i % 2 == 0)  # 50% 오류
    assert run(c.should_route()) is True
    assert run(c.check()) == "error_rate"
    assert run(c.check()) is None  # 한 번만
    assert run(c.rolled_back()) is True
    assert run(c.should_route()) is False
    state = run(c.state())
    assert state["state"] == "rolled_back" and state["reason"] == "error_rate" and state["at"]
    assert state["canary"] == {"requests": 10, "errors": 5, "error_rate": 0.5, "mean_score": None}
    assert state["baseline"] == {"requests": 30, "errors": 0, "error_rate": 0.0, "mean_score": None}
    assert len(log.lines) == 1
    event, fields = log.lines[0]
    assert event == "canary_rollback" and fields["reason"] == "error_rate"
    assert fields["canary_error_rate"] == 0.5 and fields["baseline_error_rate"] == 0.0 and fields["model"] == MODEL


def test_error_rate_is_compared_with_the_baseline(log):
    c = make()
    for i in range(20):
        c.record("baseline", i % 5 != 0)  # baseline 20% 오류
    for i in range(20):
        c.record("canary", i % 5 != 0)  # 카나리도 20%: 모델 탓이 아님
    assert run(c.check()) is None
    for _ in range(3):
        c.record("canary", False)  # 7/23 = 30.4% > 20% + 5%
    assert run(c.check()) == "error_rate"


def test_increase_within_the_allowance_is_fine(log):
    c = make(max_error_increase=0.2)
    for _ in range(10):
        c.record("baseline", True)
    for i in range(10):
        c.record("canary", i != 0)  # 10% <= 0% + 20%
    assert run(c.check()) is None and not log.lines


def test_rollback_on_score_drop(log):
    c = make()
    for _ in range(4):
        c.record_score("canary", 2.0)
        c.record_score("baseline", 4.5)
    assert run(c.check()) is None  # 판정 점수가 아직 4개씩
    c.record_score("canary", 2.0)
    c.record_score("baseline", 4.5)
    assert run(c.check()) == "quality"
    assert log.lines[0][1]["canary_mean_score"] == 2.0 and log.lines[0][1]["baseline_mean_score"] == 4.5
    assert run(c.state())["reason"] == "quality"


def test_small_score_drop_is_fine():
    c = make()
    for _ in range(5):
        c.record_score("canary", 4.1)
        c.record_score("baseline", 4.5)  # 0.4 < 0.5
    assert run(c.check()) is None


def test_outcomes_older_than_the_window_do_not_count(log):
    clock = Clock()
    c = make(clock)
    for _ in range(9):
        c.record("canary", False)
    clock.now += 61  # 창(60 초)이 지남: 앞의 9개는 빠짐
    c.record("canary", False)
    assert run(c.check()) is None
    assert run(c.state())["canary"]["requests"] == 1
    for _ in range(9):
        c.record("canary", False)
    assert run(c.check()) == "error_rate"


def test_scores_older_than_the_window_do_not_count():
    clock = Clock()
    c = make(clock)
    for _ in range(5):
        c.record_score("canary", 1.0)
        c.record_score("baseline", 5.0)
    clock.now += 61
    c.record_score("canary", 1.0)
    assert run(c.check()) is None
    assert run(c.state())["canary"]["mean_score"] == 1.0


# --------------------------------------------------------------------------- 진짜 Redis: 복제본 두 개
@pytest.fixture
def redis_server():
    try:
        from coursekit.redis_server import RedisServer, find_redis
    except ImportError:
        pytest.skip("coursekit.redis_server 가 없습니다 (코스 저장소 밖)")
    if find_redis() is None:
        pytest.skip("redis-server 가 없습니다")
    with RedisServer() as server:
        yield server


def test_rollback_by_one_replica_is_seen_by_the_other(redis_server, log):
    clock = Clock()

    async def go():
        a = make(clock, redis_url=redis_server.url)
        b = make(clock, redis_url=redis_server.url)
        try:
            assert await b.should_route() in (True, False) and not await b.rolled_back()  # B 가 읽어 1초 캐시
            for _ in range(10):
                a.record("canary", False)
            reason = await a.check()
            seen_at_once = await b.rolled_back()  # 캐시가 아직 유효 (1초 안)
            clock.now += 1.1
            seen_later = await b.rolled_back()
            for _ in range(10):
                b.record("canary", False)
            return reason, seen_at_once, seen_later, await b.check(), await b.should_route(), await b.state()
        finally:
            await a.aclose()
            await b.aclose()

    reason, seen_at_once, seen_later, b_check, b_routes, b_state = run(go())
    stored = json.loads(redis_server.client().get(f"llm-chat:canary:v1:{MODEL}"))
    assert reason == "error_rate"
    assert seen_at_once is False and seen_later is True  # 다른 복제본은 늦어도 1초 뒤에 봄
    assert b_check is None and b_routes is False  # B 는 다시 롤백하지 않음 (롤백 메트릭은 A 에서 한 번)
    assert b_state["state"] == "rolled_back" and b_state["reason"] == "error_rate"
    assert stored["state"] == "rolled_back" and stored["reason"] == "error_rate" and stored["at"]
    assert redis_server.client().ttl(f"llm-chat:canary:v1:{MODEL}") == -1  # TTL 없음
    assert len(log.lines) == 1


def test_two_replicas_judging_at_once_count_one_rollback(redis_server, log):
    async def go():
        a, b = make(redis_url=redis_server.url), make(redis_url=redis_server.url)
        try:
            for c in (a, b):
                await c.rolled_back()  # 둘 다 "아직 아님" 을 캐시한 상태에서
                for _ in range(10):
                    c.record("canary", False)
            return await a.check(), await b.check(), await a.rolled_back(), await b.rolled_back()
        finally:
            await a.aclose()
            await b.aclose()

    assert run(go()) == ("error_rate", None, True, True)  # SET NX: 두 번째는 이미 있는 상태를 따름
    assert len(log.lines) == 1


def test_another_model_is_not_rolled_back(redis_server):
    redis_server.client().set(f"llm-chat:canary:v1:{MODEL}", json.dumps({"state": "rolled_back", "reason": "quality"}))

    async def go():
        old, new = make(redis_url=redis_server.url), Canary("gemini-4-pro", 0.2, redis_url=redis_server.url)
        try:
            return await old.rolled_back(), await new.rolled_back(), (await old.state())["reason"]
        finally:
            await old.aclose()
            await new.aclose()

    assert run(go()) == (True, False, "quality")  # 새 CANARY_MODEL 로 다시 배포하면 새로 시작


def test_redis_down_is_treated_as_rolled_back(redis_server, caplog):
    clock = Clock()

    async def go():
        c = make(clock, redis_url=redis_server.url)
        try:
            before = await c.should_route(), await c.rolled_back()
            redis_server.stop()
            clock.now += 1.1
            down = await c.rolled_back(), await c.should_route(), await c.state()
            redis_server.start()  # 비어서 돌아옴: 롤백 기록이 없으므로 다시 active
            clock.now += 1.1
            back = await c.rolled_back()
            return before, down, back
        finally:
            await c.aclose()

    with caplog.at_level("WARNING", logger="llm-chat.canary"):
        before, (down, routes, state), back = run(go())
    assert before[1] is False
    assert down is True and routes is False
    assert state["state"] == "rolled_back" and state["reason"] == "state_unknown"
    assert back is False
    assert any("Redis" in r.getMessage() for r in caplog.records if r.name == "llm-chat.canary")


def test_rollback_is_kept_when_redis_restarts_empty(redis_server, log):
    clock = Clock()

    async def go():
        c = make(clock, redis_url=redis_server.url)
        try:
            for _ in range(10):
                c.record("canary", False)
            reason = await c.check()
            redis_server.stop()
            redis_server.start()
            clock.now += 1.1
            return reason, await c.rolled_back(), await c.should_route()
        finally:
            await c.aclose()

    assert run(go()) == ("error_rate", True, False)  # 롤백은 되돌리지 않음 (운영자가 CANARY_MODEL 을 바꿀 때까지)
