"""06단계 2부 단위 테스트: A/B 실험 (lesson §15) 과 카나리 (lesson §16) 를 /chat, /chat/batch, /feedback 에 잇는 부분.
배정 규칙과 카나리의 판정 규칙 자체는 test_experiments.py, test_canary.py 가 봅니다. 가짜 LLM 만 씁니다."""

import asyncio
import json

import pytest
from conftest import FakeLLM
from fastapi.testclient import TestClient
from pydantic import ValidationError

HEADERS = {"X-API-Key": "test-service-key"}
VARIANTS = {"control": {"prompt_version": "v1", "weight": 0.3}, "treatment": {"prompt_version": "v2", "weight": 0.7}}
EXPERIMENT = "prompt-test-7"


class PromptLLM(FakeLLM):
    """답 = 받은 시스템 프롬프트의 앞 20자 (어느 프롬프트로 물었는지 보임). fail 이면 503."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.fail = fail

    async def ainvoke(self, messages):
        if self.fail:
            from google.genai.errors import ServerError

            self.calls.append(messages)
            raise ServerError(503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
        reply = await super().ainvoke(messages)
        reply.content = "프롬프트: " + messages[0].content[:20]
        return reply

    async def aclose(self):
        pass


def metric(text: str, name: str, *labels: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(label in line for label in labels))


@pytest.fixture
def experiment(service, monkeypatch):
    variants = {name: service.experiments.Variant(**v) for name, v in VARIANTS.items()}
    monkeypatch.setattr(service.settings, "ab_experiment", EXPERIMENT)
    monkeypatch.setattr(service.settings, "ab_variants", variants)
    monkeypatch.setattr(service, "VARIANT_PROMPTS", service.experiments.check_prompts(variants, service.load_prompt))
    fake = PromptLLM()
    service.app.dependency_overrides[service.get_llm] = lambda: fake
    return fake


def expected_variant(service, user):
    return service.experiments.assign(EXPERIMENT, user, service.settings.ab_variants)


# --------------------------------------------------------------------------- 설정: 서비스가 시작하지 않는 경우

def test_experiment_settings_are_checked_at_start(service):
    one = json.dumps({"only": {"prompt_version": "v1", "weight": 1.0}})
    with pytest.raises(ValidationError, match="2개 이상"):
        service.Settings(ab_experiment="x", ab_variants=one)
    uneven = json.dumps({"a": {"prompt_version": "v1", "weight": 0.5}, "b": {"prompt_version": "v2", "weight": 0.6}})
    with pytest.raises(ValidationError, match="합이 1"):
        service.Settings(ab_experiment="x", ab_variants=uneven)
    with pytest.raises(ValidationError):
        service.Settings(ab_experiment="Bad Name", ab_variants=json.dumps(VARIANTS))
    ok = service.Settings(ab_experiment="x", ab_variants=json.dumps(VARIANTS))
    assert list(ok.ab_variants) == ["control", "treatment"] and ok.ab_variants["control"].weight == 0.3
    assert service.Settings(ab_variants="").ab_variants == {}  # 실험이 꺼져 있으면 변형은 없어도 됨


def test_ab_and_canary_together_refuse_to_start(service):
    with pytest.raises(ValidationError, match="함께 켤 수 없습니다"):
        service.Settings(ab_experiment="x", ab_variants=json.dumps(VARIANTS), canary_model="gemini-3.5-pro")


def test_a_variant_without_its_prompt_file_refuses_to_start(service):
    variants = {"a": service.experiments.Variant(prompt_version="v1", weight=0.5),
                "b": service.experiments.Variant(prompt_version="v9", weight=0.5)}
    with pytest.raises(RuntimeError, match="v9"):
        service.experiments.check_prompts(variants, service.load_prompt)


def test_defaults_keep_both_off(service):
    defaults = service.Settings()
    assert defaults.ab_experiment == "" and defaults.canary_model == ""
    assert defaults.canary_share == 0.05 and defaults.canary_min_requests == 20


# --------------------------------------------------------------------------- A/B 실험 (§15)

def test_variant_answers_with_its_prompt_and_is_sticky(service, experiment):
    with TestClient(service.app) as client:
        for user in ("u1", "u2", "u3", "u4", "u5", "u6"):
            bodies = [client.post("/chat", json={"message": "질문", "user_id": user}, headers=HEADERS) for _ in range(2)]
            want = expected_variant(service, user)
            for r in bodies:
                body = r.json()
                assert body["variant"] == want and r.headers["X-Variant"] == want
                assert body["prompt_version"] == VARIANTS[want]["prompt_version"]
                assert body["response"] == "프롬프트: " + service.VARIANT_PROMPTS[want][:20]


def test_without_user_id_the_key_decides(service, experiment):
    user = service.experiments.user_key(None, "test-service-key")
    with TestClient(service.app) as client:
        variants = {client.post("/chat", json={"message": f"q{i}"}, headers=HEADERS).json()["variant"] for i in range(3)}
    assert variants == {expected_variant(service, user)}


def test_no_experiment_no_variant_no_header(service, experiment, monkeypatch):
    monkeypatch.setattr(service.settings, "ab_experiment", "")
    with TestClient(service.app) as client:
        r = client.post("/chat", json={"message": "질문", "user_id": "u1"}, headers=HEADERS)
    assert r.json()["variant"] is None and "X-Variant" not in r.headers
    assert r.json()["prompt_version"] == service.settings.prompt_version


def users_per_variant(service):
    found = {}
    for i in range(100):
        found.setdefault(expected_variant(service, f"user{i}"), f"user{i}")
        if len(found) == 2:
            return found
    raise AssertionError("두 변형의 사용자를 찾지 못함")


def test_variants_never_share_cache_entries(service, experiment, monkeypatch):
    monkeypatch.setattr(service.settings, "cache_ttl_seconds", 60.0)
    users = users_per_variant(service)
    with TestClient(service.app) as client:
        answers = {v: client.post("/chat", json={"message": "같은 질문", "user_id": u}, headers=HEADERS)
                   for v, u in users.items()}
        again = client.post("/chat", json={"message": "같은 질문", "user_id": users["control"]}, headers=HEADERS)
    assert [r.headers["X-Cache"] for r in answers.values()] == ["miss", "miss"]
    assert len(experiment.calls) == 2
    assert again.headers["X-Cache"] == "hit" and again.json()["prompt_version"] == "v1"


def test_experiment_metrics_and_feedback_attribution(service, experiment):
    users = users_per_variant(service)
    with TestClient(service.app) as client:
        before = client.get("/metrics").text
        ids = {v: [client.post("/chat", json={"message": f"q{i}", "user_id": u}, headers=HEADERS).json()["response_id"]
                   for i in range(3)] for v, u in users.items()}
        for rid in ids["control"]:
            assert client.post("/feedback", json={"response_id": rid, "rating": "up"}, headers=HEADERS).status_code == 200
        client.post("/feedback", json={"response_id": ids["treatment"][0], "rating": "down"}, headers=HEADERS)
        after = client.get("/metrics").text

    def rise(name, *labels):
        return metric(after, name, *labels) - metric(before, name, *labels)

    exp = f'experiment="{EXPERIMENT}"'
    assert rise("llm_experiment_requests_total", exp, 'variant="control"') == 3
    assert rise("llm_experiment_requests_total", exp, 'variant="treatment"') == 3
    assert rise("llm_experiment_feedback_total", exp, 'variant="control"', 'rating="up"') == 3
    assert rise("llm_experiment_feedback_total", exp, 'variant="treatment"', 'rating="down"') == 1
    assert rise("llm_experiment_feedback_total", exp, 'variant="treatment"', 'rating="up"') == 0
    assert rise("llm_experiment_cost_usd_total", exp, 'variant="control"') > 0
    assert "user0" not in after and "user1" not in after  # 사용자 id 는 라벨이 아님


def test_batch_items_go_through_the_experiment(service, experiment):
    with TestClient(service.app) as client:
        r = client.post("/chat/batch", json={"messages": ["a", "b"], "user_id": "u7"}, headers=HEADERS)
    want = expected_variant(service, "u7")
    assert [x["variant"] for x in r.json()["results"]] == [want, want]


def test_shared_responses_remember_the_variant(service):
    async def run():
        store = service.resilience.SharedResponses(None)
        with_variant, without = await store.issue("treatment"), await store.issue()
        return [await store.claim_variant(with_variant), await store.claim_variant(with_variant),
                await store.claim_variant(without), await store.claim_variant("0" * 32)]

    assert asyncio.run(run()) == [("ok", "treatment"), ("exists", None), ("ok", None), ("unknown", None)]


def test_variant_travels_through_redis_to_the_other_replica(service):
    try:
        from coursekit.redis_server import RedisServer, find_redis
    except ImportError:
        pytest.skip("coursekit.redis_server 가 없습니다 (코스 저장소 밖)")
    if find_redis() is None:
        pytest.skip("redis-server 가 없습니다")

    async def run(url):
        a, b = service.resilience.SharedResponses(url), service.resilience.SharedResponses(url)
        rid = await a.issue("control")
        got = [await b.claim_variant(rid), await a.claim_variant(rid), await b.claim(rid)]
        await a.aclose()
        await b.aclose()
        return got

    with RedisServer() as server:
        assert asyncio.run(run(server.url)) == [("ok", "control"), ("exists", None), "exists"]


# --------------------------------------------------------------------------- 카나리 (§16)

@pytest.fixture
def canary_on(service, monkeypatch):
    """카나리 켜짐 (CANARY_MIN_REQUESTS=4). 돌려주는 함수: (client, canary 가짜, 늘 카나리로 보낼지)."""
    monkeypatch.setattr(service.settings, "canary_model", "gemini-canary")
    monkeypatch.setattr(service.settings, "canary_min_requests", 4)
    baseline = PromptLLM()
    service.app.dependency_overrides[service.get_llm] = lambda: baseline

    def setup(client, fake, share_hit: bool = True):
        client.app.state.canary_llm = fake
        client.app.state.canary.rng = (lambda: 0.0) if share_hit else (lambda: 0.99)

    return setup


def test_canary_routed_answers_are_marked(service, canary_on):
    with TestClient(service.app) as client:
        canary_on(client, PromptLLM())
        r = client.post("/chat", json={"message": "질문"}, headers=HEADERS)
        state = client.get("/canary", headers=HEADERS).json()
        client.app.state.canary.rng = lambda: 0.99
        base = client.post("/chat", json={"message": "질문"}, headers=HEADERS)
        metrics = client.get("/metrics").text
    assert r.json()["model"] == "gemini-canary" and r.headers["X-Canary"] == "true"
    assert base.json()["model"] == service.settings.llm_model and "X-Canary" not in base.headers
    assert state["state"] == "active" and state["model"] == "gemini-canary" and state["canary"]["requests"] == 1
    assert metric(metrics, "llm_canary_requests_total", 'role="canary"', 'outcome="ok"') >= 1
    assert metric(metrics, "llm_canary_active") == 1


def test_failing_canary_rolls_back_and_stops_getting_traffic(service, canary_on):
    broken = PromptLLM(fail=True)
    with TestClient(service.app) as client:
        canary_on(client, broken)
        before = client.get("/metrics").text
        statuses = [client.post("/chat", json={"message": f"q{i}"}, headers=HEADERS).status_code for i in range(4)]
        state = client.get("/canary", headers=HEADERS).json()
        calls = len(broken.calls)
        after_rollback = [client.post("/chat", json={"message": f"r{i}"}, headers=HEADERS) for i in range(5)]
        after = client.get("/metrics").text
    assert statuses == [502] * 4  # 업스트림 오류로 끝난 카나리 요청 (Fallback 없음)
    assert state["state"] == "rolled_back" and state["reason"] == "error_rate"
    assert len(broken.calls) == calls  # 롤백 뒤에는 카나리 모델을 부르지 않음
    assert all(r.status_code == 200 and "X-Canary" not in r.headers for r in after_rollback)
    assert metric(after, "llm_canary_rollbacks_total", 'reason="error_rate"') - \
        metric(before, "llm_canary_rollbacks_total", 'reason="error_rate"') == 1
    assert metric(after, "llm_canary_active") == 0


def test_canary_endpoint_needs_the_key_and_says_off(service):
    with TestClient(service.app) as client:
        assert client.get("/canary").status_code == 401
        body = client.get("/canary", headers=HEADERS).json()
    assert body["state"] == "off" and body["model"] is None
