"""06단계 2부 단위 테스트: 배치 처리 (POST /chat/batch, lesson §13) 와 토큰 예산 (lesson §14).
가짜 LLM 만 씁니다 (네트워크 없음)."""

import asyncio

import pytest
from conftest import FakeLLM
from fastapi.testclient import TestClient
from langchain_core.messages import AIMessage

HEADERS = {"X-API-Key": "test-service-key"}


class CountingLLM(FakeLLM):
    """호출마다 delay 초, 동시에 진행 중인 호출 수의 최댓값(max_in_flight), fail 에 든 질문은 503."""

    def __init__(self, delay: float = 0.0, fail: tuple[str, ...] = (), truncate: tuple[str, ...] = ()):
        super().__init__(default="답입니다.")
        self.delay = delay
        self.fail = fail
        self.truncate = truncate
        self.in_flight = 0
        self.max_in_flight = 0

    async def ainvoke(self, messages):
        question = messages[-1].content
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if question in self.fail:
                from google.genai.errors import ServerError

                self.calls.append(messages)
                raise ServerError(503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
            if question in self.truncate:
                self.calls.append(messages)
                return AIMessage(content="잘린 답의 앞부분", response_metadata={"finish_reason": "MAX_TOKENS"},
                                 usage_metadata={"input_tokens": 10, "output_tokens": 40, "total_tokens": 50})
            reply = await super().ainvoke(messages)
            reply.content = f"답: {question}"
            return reply
        finally:
            self.in_flight -= 1

    async def aclose(self):
        pass


def metric(text: str, name: str, label: str = "") -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and label in line and not line.startswith("#"))


@pytest.fixture
def llm(service):
    fake = CountingLLM()
    service.app.dependency_overrides[service.get_llm] = lambda: fake
    return fake


def batch(client, messages, **extra):
    return client.post("/chat/batch", json={"messages": messages, **extra}, headers=HEADERS)


# --------------------------------------------------------------------------- 배치 (§13)

def test_batch_answers_in_order_like_chat(service, llm):
    questions = [f"질문 {i}" for i in range(5)]
    with TestClient(service.app) as client:
        r = batch(client, questions)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["ok"] for x in results] == [True] * 5
        assert [x["response"] for x in results] == [f"답: {q}" for q in questions]
        single = client.post("/chat", json={"message": questions[2]}, headers=HEADERS).json()
    assert results[2]["response"] == single["response"]
    assert set(results[2]) == set(single) | {"ok"}  # 성공한 결과 = ChatResponse 의 필드 + ok
    assert len({x["response_id"] for x in results}) == 5  # 질문마다 자기 응답 id (피드백은 답마다)


def test_batch_respects_the_concurrency_bound(service, monkeypatch):
    """9개, BATCH_CONCURRENCY=3: 업스트림에 동시에 3개까지만 (asyncio.gather 처럼 한꺼번에 9개가 아님)."""
    monkeypatch.setattr(service.settings, "batch_concurrency", 3)
    fake = CountingLLM(delay=0.05)
    service.app.dependency_overrides[service.get_llm] = lambda: fake
    with TestClient(service.app) as client:
        r = batch(client, [f"질문 {i}" for i in range(9)])
    assert r.status_code == 200
    assert len(fake.calls) == 9
    assert 2 <= fake.max_in_flight <= 3


def test_one_failed_item_does_not_fail_the_batch(service):
    fake = CountingLLM(fail=("망가진 질문",))
    service.app.dependency_overrides[service.get_llm] = lambda: fake
    with TestClient(service.app) as client:
        r = batch(client, ["첫 질문", "망가진 질문", "셋째 질문"])
    assert r.status_code == 200
    first, broken, third = r.json()["results"]
    assert first["ok"] and third["ok"] and third["response"] == "답: 셋째 질문"
    assert broken == {"ok": False, "error": {"code": "upstream_error", "message": broken["error"]["message"]}}


@pytest.mark.parametrize("messages", [[f"q{i}" for i in range(17)], ["좋은 질문", "   "], [], ["x" * 4001]])
def test_invalid_batches_are_422_before_any_upstream_call(service, llm, messages):
    with TestClient(service.app) as client:
        r = batch(client, messages)
    assert r.status_code == 422
    assert "detail" in r.json()  # 문서에 적은 검증 오류 JSON (FastAPI 의 모양)
    assert llm.calls == []


def test_batch_needs_the_key(service, llm):
    with TestClient(service.app) as client:
        r = client.post("/chat/batch", json={"messages": ["q"]})
    assert r.status_code == 401 and llm.calls == []


def test_batch_costs_one_request_per_message(service, llm, monkeypatch):
    """한도 5/분: 배치 3개 -> 남은 2, 다음 배치 3개 -> 전체 429 (세지도 않음), 그래도 /chat 두 번은 됨."""
    monkeypatch.setattr(service.settings, "rate_limit", "5/minute")
    with TestClient(service.app) as client:
        first = batch(client, ["a", "b", "c"])
        assert first.status_code == 200
        assert "remaining=2" in first.headers["RateLimit"]
        second = batch(client, ["d", "e", "f"])
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limited"
        assert "Retry-After" in second.headers
        assert [client.post("/chat", json={"message": m}, headers=HEADERS).status_code for m in "gh"] == [200, 200]
    assert len(llm.calls) == 5


def test_a_batch_takes_one_in_flight_slot(service, llm, monkeypatch):
    monkeypatch.setattr(service.settings, "max_in_flight", 1)
    with TestClient(service.app) as client:
        r = batch(client, ["a", "b", "c", "d"])
    assert r.status_code == 200 and len(llm.calls) == 4


def test_batch_metric_and_one_log_line(service, llm, caplog):
    with TestClient(service.app) as client:
        before = client.get("/metrics").text
        batch(client, ["a", "b", "c"])
        after = client.get("/metrics").text
    assert metric(after, "llm_batch_size_count") - metric(before, "llm_batch_size_count") == 1
    assert metric(after, "llm_batch_size_sum") - metric(before, "llm_batch_size_sum") == 3
    lines = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("route") == "/chat/batch"]
    assert len(lines) == 1
    assert lines[0]["batch_size"] == 3 and lines[0]["batch_failed"] == 0
    assert "cache" not in lines[0] and "attempts" not in lines[0]  # 질문마다의 필드가 배치의 줄에 섞이지 않음


# --------------------------------------------------------------------------- 토큰 예산 (§14)

def test_budget_is_passed_to_answering_clients_not_the_judge(service, monkeypatch):
    monkeypatch.setattr(service.settings, "max_output_tokens", 40)
    monkeypatch.setattr(service.settings, "thinking_budget", 0)
    monkeypatch.setattr(service.settings, "fallback_model", "gemini-3.5-flash-lite")
    with TestClient(service.app):
        state = service.app.state
        for client in (state.llm, state.fallback_llm):
            assert client.max_output_tokens == 40 and client.thinking_budget == 0
        assert state.judge_llm.max_output_tokens is None
    assert service.answer_client("gemini-3.5-pro").max_output_tokens == 40


def test_budget_settings_defaults_and_empty_values(service):
    defaults = service.Settings()
    assert defaults.max_output_tokens == 1024 and defaults.thinking_budget is None
    assert defaults.batch_max_items == 16 and defaults.batch_concurrency == 4
    assert service.Settings(max_output_tokens="", thinking_budget="").max_output_tokens is None
    with pytest.raises(ValueError):
        service.Settings(max_output_tokens=0)


def test_truncated_answer_is_marked_counted_and_never_cached(service, monkeypatch):
    monkeypatch.setattr(service.settings, "cache_ttl_seconds", 60.0)
    fake = CountingLLM(truncate=("긴 질문",))
    service.app.dependency_overrides[service.get_llm] = lambda: fake
    with TestClient(service.app) as client:
        before = client.get("/metrics").text
        first = client.post("/chat", json={"message": "긴 질문"}, headers=HEADERS)
        again = client.post("/chat", json={"message": "긴 질문"}, headers=HEADERS)
        short = client.post("/chat", json={"message": "짧은 질문"}, headers=HEADERS)
        after = client.get("/metrics").text
    assert first.json()["truncated"] is True and first.json()["usage"]["output_tokens"] == 40
    assert again.headers["X-Cache"] == "miss" and again.json()["truncated"] is True
    assert len([c for c in fake.calls if c[-1].content == "긴 질문"]) == 2  # 잘린 답은 캐시에 없음: 다시 업스트림에
    assert short.json()["truncated"] is False
    rise = metric(after, "llm_truncated_answers_total") - metric(before, "llm_truncated_answers_total")
    assert rise == 2


def test_truncated_item_in_a_batch(service):
    fake = CountingLLM(truncate=("긴 질문",))
    service.app.dependency_overrides[service.get_llm] = lambda: fake
    with TestClient(service.app) as client:
        results = batch(client, ["긴 질문", "짧은 질문"]).json()["results"]
    assert [x["truncated"] for x in results] == [True, False]
