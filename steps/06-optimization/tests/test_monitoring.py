"""모니터링: /metrics 의 이름과 버킷, 토큰과 비용, 실패 종류, 피드백 검증, 거절, 판정, 드리프트(PSI).

메트릭은 프로세스 전체에 하나(prometheus_client 의 REGISTRY)라서, 테스트마다 전후 값의 차이(delta)를 봅니다.
"""

import asyncio
import math
import time

import httpx
import httpx2
import pytest
from google.genai.errors import ServerError
from langchain_core.exceptions import ModelRateLimitError
from langchain_core.messages import AIMessage
from prometheus_client.parser import text_string_to_metric_families

HEADERS = {"X-API-Key": "test-service-key"}
LLM_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
SECRET_VALUES = ("test-service-key", "test-gemini-key")


# --------------------------------------------------------------------------- 도우미
def scrape(client) -> dict[str, list]:
    """GET /metrics 를 읽어 {샘플 이름: [(라벨, 값), ...]}."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(samples: dict, name: str, **labels) -> float:
    """라벨이 labels 를 모두 포함하는 샘플 값의 합 (없으면 0)."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items()))


class ScriptedLLM:
    """usage_metadata 를 정해 둔 답, 또는 정해 둔 예외를 내는 가짜 LLM."""

    def __init__(self, text="하늘클라우드에는 세 가지 요금제가 있습니다.", usage=None, error=None, delay=0.0):
        self.text, self.error, self.delay = text, error, delay
        self.usage = usage or {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        self.calls = []

    async def ainvoke(self, messages):
        self.calls.append(messages)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return AIMessage(content=self.text, usage_metadata=self.usage)


@pytest.fixture
def use_llm(service):
    def use(llm):
        service.app.dependency_overrides[service.get_llm] = lambda: llm
        return llm
    return use


def chat(client, message="요금제는 어떻게 되나요?", **extra):
    return client.post("/chat", json={"message": message, **extra}, headers=HEADERS)


# --------------------------------------------------------------------------- /metrics
def test_metrics_needs_no_key_and_is_prometheus_text(client):
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_metrics_families_names_and_no_secrets(client):
    r = chat(client, "비밀스러운 질문 xyz-123", user_id="user-42")
    assert r.status_code == 200
    text = client.get("/metrics").text
    for family in ("http_server_request_duration_seconds", "gen_ai_client_operation_duration_seconds",
                   "gen_ai_client_token_usage", "llm_cost_usd_total", "llm_answers_total", "llm_input_drift_psi"):
        assert f"# TYPE {family} " in text, family
    # 값의 종류가 끝없는 것은 라벨이 아닙니다: 질문, 사용자 id, 응답 id. 키는 어디에도 없습니다.
    for forbidden in ("비밀스러운 질문", "user-42", r.json()["response_id"], *SECRET_VALUES):
        assert forbidden not in text, forbidden


def test_metrics_scrapes_are_not_counted_as_traffic(client):
    client.get("/metrics")
    client.get("/metrics")
    samples = scrape(client)
    assert value(samples, "http_server_request_duration_seconds_count", http_route="/metrics") == 0
    before = value(samples, "http_server_request_duration_seconds_count", http_route="/health")
    client.get("/health")
    assert value(scrape(client), "http_server_request_duration_seconds_count", http_route="/health") == before + 1


def test_series_do_not_grow_with_messages_or_users(client):
    chat(client, "첫 질문", user_id="a")
    series = set(scrape(client))
    labels_before = {(n, tuple(sorted(lab.items()))) for n, rows in scrape(client).items() for lab, _ in rows}
    for k in range(20):
        assert chat(client, f"다른 질문 {k}", user_id=f"user{k}").status_code == 200
    after = scrape(client)
    labels_after = {(n, tuple(sorted(lab.items()))) for n, rows in after.items() for lab, _ in rows}
    assert set(after) == series
    grown = {n for n, _ in labels_after - labels_before if not n.startswith(("python_", "process_"))}
    assert not grown, grown


@pytest.mark.parametrize("family", ["http_server_request_duration_seconds", "gen_ai_client_operation_duration_seconds"])
def test_latency_histograms_use_the_llm_buckets(client, family):
    chat(client)
    bounds = sorted({float(lab["le"]) for lab, _ in scrape(client)[f"{family}_bucket"]})
    assert bounds == LLM_BUCKETS + [math.inf]


def test_token_histogram_uses_the_semconv_buckets(client):
    chat(client)
    bounds = sorted({float(lab["le"]) for lab, _ in scrape(client)["gen_ai_client_token_usage_bucket"]})
    assert bounds == [4.0**i for i in range(14)] + [math.inf]


# --------------------------------------------------------------------------- 토큰과 비용
def test_tokens_and_cost_from_usage_metadata_thinking_counted_once(client, use_llm, service):
    # gemini 의 output_tokens 에는 사고 토큰(reasoning)이 이미 들어 있습니다: 567 이 전부, 300 을 또 더하면 안 됨.
    use_llm(ScriptedLLM(usage={"input_tokens": 1234, "output_tokens": 567, "total_tokens": 1801,
                               "output_token_details": {"reasoning": 300}}))
    model = service.settings.llm_model
    before = scrape(client)
    assert chat(client).status_code == 200
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="input", gen_ai_request_model=model) == 1234
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="output", gen_ai_request_model=model) == 567
    assert delta("gen_ai_client_token_usage_count", gen_ai_token_type="output", gen_ai_request_model=model) == 1
    expected = (1234 * 1.50 + 567 * 9.00) / 1_000_000  # eval/prices.toml 의 gemini-3.5-flash
    assert delta("llm_cost_usd_total", gen_ai_request_model=model) == pytest.approx(expected, rel=1e-12)


def test_cost_uses_the_price_table_and_knows_the_judge_model(service):
    import telemetry

    assert telemetry.PRICES["gemini-3.5-flash-judge"] == (1.50, 9.00)
    assert telemetry.call_cost("gemini-3.5-flash-lite", 1_000_000, 1_000_000) == pytest.approx(0.25 + 1.50)
    assert telemetry.call_cost("no-such-model", 10, 10) is None


# --------------------------------------------------------------------------- 실패 종류
@pytest.mark.parametrize("error, status, kind", [
    (ModelRateLimitError("429"), 503, "upstream_rate_limited"),
    (ServerError(503, {"error": {"code": 503, "message": "x", "status": "UNAVAILABLE"}}), 502, "upstream_error"),
    (httpx2.ReadTimeout("느림"), 504, "upstream_timeout"),
    (httpx.ReadTimeout("느림"), 504, "upstream_timeout"),
    (RuntimeError("뜻밖의 오류"), 500, "internal_error"),
])
def test_failed_calls_are_counted_by_kind(service, use_llm, error, status, kind):
    from fastapi.testclient import TestClient

    use_llm(ScriptedLLM(error=error))
    model = service.settings.llm_model
    with TestClient(service.app, raise_server_exceptions=False) as client:
        before = scrape(client)
        r = chat(client)
        assert r.status_code == status and r.json()["error"]["code"] == kind
        after = scrape(client)
    name = "gen_ai_client_operation_duration_seconds_count"
    assert value(after, name, error_type=kind, gen_ai_request_model=model) - \
        value(before, name, error_type=kind, gen_ai_request_model=model) == 1
    # 실패한 호출에는 토큰도 비용도 없습니다.
    assert value(after, "gen_ai_client_token_usage_count") == value(before, "gen_ai_client_token_usage_count")
    assert value(after, "llm_answers_total") == value(before, "llm_answers_total")


# --------------------------------------------------------------------------- 피드백
def test_chat_issues_a_response_id_and_accepts_a_user_id(client):
    r = chat(client, user_id="user_1@example.com")
    rid = r.json()["response_id"]
    assert len(rid) == 32 and int(rid, 16) >= 0 and rid == rid.lower()
    assert chat(client, user_id="공백 있는 id").status_code == 422
    assert chat(client, user_id="x" * 65).status_code == 422


def test_feedback_up_down_and_score(client):
    ids = [chat(client).json()["response_id"] for _ in range(3)]
    before = scrape(client)
    assert client.post("/feedback", json={"response_id": ids[0], "rating": "up", "score": 5},
                       headers=HEADERS).json() == {"response_id": ids[0], "rating": "up", "recorded": True}
    assert client.post("/feedback", json={"response_id": ids[1], "rating": "down", "comment": "틀렸어요"},
                       headers=HEADERS).status_code == 200
    assert client.post("/feedback", json={"response_id": ids[2], "rating": "down", "score": 2},
                       headers=HEADERS).status_code == 200
    after = scrape(client)
    assert value(after, "llm_feedback_total", rating="up") - value(before, "llm_feedback_total", rating="up") == 1
    assert value(after, "llm_feedback_total", rating="down") - value(before, "llm_feedback_total", rating="down") == 2
    assert value(after, "llm_feedback_score_sum") - value(before, "llm_feedback_score_sum") == 7
    assert value(after, "llm_feedback_score_count") - value(before, "llm_feedback_score_count") == 2
    assert "틀렸어요" not in client.get("/metrics").text


def test_feedback_unknown_and_second_feedback(client):
    rid = chat(client).json()["response_id"]
    r = client.post("/feedback", json={"response_id": "0" * 32, "rating": "up"}, headers=HEADERS)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_response_id"
    assert client.post("/feedback", json={"response_id": rid, "rating": "up"}, headers=HEADERS).status_code == 200
    before = scrape(client)
    r = client.post("/feedback", json={"response_id": rid, "rating": "down"}, headers=HEADERS)
    assert r.status_code == 409 and r.json()["error"]["code"] == "feedback_exists"
    assert value(scrape(client), "llm_feedback_total") == value(before, "llm_feedback_total")


@pytest.mark.parametrize("body", [
    {},
    {"rating": "up"},
    {"response_id": "RID", "rating": "meh"},
    {"response_id": "RID", "rating": "UP"},
    {"response_id": "RID", "rating": "up", "score": 0},
    {"response_id": "RID", "rating": "up", "score": 6},
    {"response_id": "RID", "rating": "up", "score": 4.5},
    {"response_id": "RID", "rating": "up", "score": "4"},
    {"response_id": "RID", "rating": "up", "score": True},
    {"response_id": "RID", "rating": "up", "comment": "가" * 1001},
    {"response_id": "RID", "rating": "up", "user": "x"},
    {"response_id": "not-a-hex-id", "rating": "up"},
    [],
])
def test_invalid_feedback_is_422_and_changes_no_counter(client, body):
    rid = chat(client).json()["response_id"]
    if isinstance(body, dict) and body.get("response_id") == "RID":
        body = {**body, "response_id": rid}
    before = scrape(client)
    r = client.post("/feedback", json=body, headers=HEADERS)
    assert r.status_code == 422, r.text
    after = scrape(client)
    for name in ("llm_feedback_total", "llm_feedback_score_count"):
        assert value(after, name) == value(before, name)
    # 잘못된 피드백은 id 를 쓰지 않습니다: 올바른 피드백은 그다음에도 받습니다.
    assert client.post("/feedback", json={"response_id": rid, "rating": "up"}, headers=HEADERS).status_code == 200


def test_feedback_needs_the_key(client):
    rid = chat(client).json()["response_id"]
    r = client.post("/feedback", json={"response_id": rid, "rating": "up"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_issued_ids_are_bounded():
    import quality

    ids = quality.IssuedResponses(limit=3)
    issued = [ids.issue() for _ in range(5)]
    assert len(ids) == 3
    assert ids.claim(issued[0]) == ids.UNKNOWN  # 가장 오래된 것부터 잊음
    assert ids.claim(issued[4]) == ids.OK and ids.claim(issued[4]) == ids.EXISTS


# --------------------------------------------------------------------------- 거절
def test_refusal_markers_come_from_the_eval_dataset(service):
    import quality

    assert "답할 수 없습니다" in quality.REFUSAL_MARKERS
    assert quality.is_refusal("제공된 정보로는 답할 수 없습니다.")
    assert quality.is_refusal("그 내용은 잘 모르 겠습니다")  # 공백 무시 (03단계 평가와 같은 규칙)
    assert not quality.is_refusal("요금제는 세 가지입니다.")


def test_answers_are_counted_with_refusals(client, use_llm, service):
    model = service.settings.llm_model
    before = scrape(client)
    use_llm(ScriptedLLM(text="제공된 정보로는 답할 수 없습니다."))
    chat(client)
    use_llm(ScriptedLLM(text="요금제는 세 가지입니다."))
    chat(client)
    chat(client)
    after = scrape(client)
    for refused, n in (("true", 1), ("false", 2)):
        got = value(after, "llm_answers_total", refused=refused, gen_ai_request_model=model) - \
            value(before, "llm_answers_total", refused=refused, gen_ai_request_model=model)
        assert got == n, refused


# --------------------------------------------------------------------------- 판정 (LLM-as-a-judge)
@pytest.mark.parametrize("text, score", [
    ('{"score": 4, "verdict": "partial", "reason": "..."}', 4),
    ('```json\n{"score": 5, "verdict": "correct"}\n```', 5),
    ('{"score": 1}', 1),
    ('{"score": 3.0}', 3),
    ('{"score": 0}', None),
    ('{"score": 6}', None),
    ('{"score": "5"}', None),
    ('{"score": true}', None),
    ('{"verdict": "correct"}', None),
    ("[5]", None),
    ("점수는 5점입니다", None),
    ("", None),
])
def test_parse_judge(text, score):
    import quality

    assert quality.parse_judge(text) == score


def test_judge_prompt_has_the_simulator_shape():
    import quality

    system, human = quality.judge_messages("요금제가 어떻게 돼요?", "세 가지입니다.\n둘째 줄")
    assert system.type == "system" and "JSON" in system.content
    assert human.content == "질문: 요금제가 어떻게 돼요?\n답변: 세 가지입니다.\n둘째 줄"


def test_judge_runs_in_background_and_records_the_answer_models_score(service, use_llm, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setattr(service.settings, "judge_sample_rate", 1.0)
    use_llm(ScriptedLLM())
    judge = ScriptedLLM(text='{"score": 4, "verdict": "partial", "reason": "일부"}', delay=1.0,
                        usage={"input_tokens": 100, "output_tokens": 20, "total_tokens": 120})
    answer_model, judge_model = service.settings.llm_model, service.settings.judge_model
    with TestClient(service.app) as client:
        client.app.state.judge_llm = judge
        before = scrape(client)
        started = time.perf_counter()
        r = chat(client, "요금제는 어떻게 되나요?")
        took = time.perf_counter() - started
        assert r.status_code == 200 and took < 0.8, took  # 판정(1 초)을 기다리지 않음
    # lifespan 의 종료가 남은 판정을 기다렸습니다.
    with TestClient(service.app) as client:
        after = scrape(client)
    assert value(after, "llm_judge_score_sum", gen_ai_request_model=answer_model) - \
        value(before, "llm_judge_score_sum", gen_ai_request_model=answer_model) == 4
    assert value(after, "gen_ai_client_token_usage_sum", gen_ai_request_model=judge_model, gen_ai_token_type="input") - \
        value(before, "gen_ai_client_token_usage_sum", gen_ai_request_model=judge_model, gen_ai_token_type="input") == 100
    (messages,) = judge.calls
    assert messages[-1].content.startswith("질문: 요금제는 어떻게 되나요?\n답변: ")


def test_judge_failure_is_never_a_client_error(service, use_llm, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setattr(service.settings, "judge_sample_rate", 1.0)
    use_llm(ScriptedLLM())
    judge_model = service.settings.judge_model
    with TestClient(service.app) as client:
        client.app.state.judge_llm = ScriptedLLM(error=ServerError(500, {"error": {"code": 500, "message": "x"}}))
        before = scrape(client)
        assert chat(client).status_code == 200
    with TestClient(service.app) as client:
        after = scrape(client)
        client.app.state.judge_llm = ScriptedLLM(text="JSON 이 아닌 답")
        assert chat(client).status_code == 200
    name = "gen_ai_client_operation_duration_seconds_count"
    assert value(after, name, error_type="upstream_error", gen_ai_request_model=judge_model) - \
        value(before, name, error_type="upstream_error", gen_ai_request_model=judge_model) == 1


def test_judge_sample_rate_zero_never_judges(client, service):
    assert service.settings.judge_sample_rate == 0  # conftest: JUDGE_SAMPLE_RATE=0
    judge = ScriptedLLM(text='{"score": 5}')
    client.app.state.judge_llm = judge
    for _ in range(5):
        chat(client)
    assert judge.calls == []


# --------------------------------------------------------------------------- 드리프트 (PSI)
def test_psi_values():
    import quality

    same = [0.25, 0.25, 0.5]
    assert quality.psi(same, same) == 0
    # 손으로 계산: (0.9-0.5) ln(0.9/0.5) + (0.1-0.5) ln(0.1/0.5) = 0.4 x (ln 1.8 + ln 5) = 0.4 ln 9
    assert quality.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(9))
    assert quality.psi([0.5, 0.5], [0.1, 0.9]) == pytest.approx(0.4 * math.log(9))


def test_length_bins_and_smoothing():
    import quality

    assert [quality.length_bin("가" * n) for n in (0, 9, 10, 14, 15, 20, 30, 50, 99, 100, 200, 5000)] == \
        [0, 0, 1, 1, 2, 3, 4, 5, 5, 6, 7, 7]
    p = quality.proportions([2, 0])
    assert p == [2.5 / 3, 0.5 / 3] and sum(p) == pytest.approx(1)


def test_drift_is_zero_until_enough_messages_then_tracks_the_window():
    import quality

    drift = quality.InputDrift(window=100)
    assert drift.min_samples == 50
    for _ in range(49):
        assert drift.observe("가" * 300) == 0.0
    assert drift.observe("가" * 300) > 0.25              # 50개째: 모두 긴 질문 -> 드리프트
    for q in quality.BASELINE_QUESTIONS * 3:           # 창(100)이 기준과 같은 분포로 바뀜
        v = drift.observe(q)
    assert v < 0.1
    assert quality.InputDrift(window=10).min_samples == 10


def test_baseline_against_itself_is_stable():
    import quality

    drift = quality.InputDrift(window=len(quality.BASELINE_QUESTIONS))
    for q in quality.BASELINE_QUESTIONS:
        v = drift.observe(q)
    assert v == pytest.approx(0.0, abs=1e-12)


def test_drift_gauge_follows_chat_messages(service, monkeypatch):
    from fastapi.testclient import TestClient

    import quality

    monkeypatch.setattr(service.settings, "drift_window", 10)
    with TestClient(service.app) as client:
        for _ in range(10):
            chat(client, "가" * 500)
        high = value(scrape(client), "llm_input_drift_psi")
        for q in quality.BASELINE_QUESTIONS[:10]:
            chat(client, q)
        low = value(scrape(client), "llm_input_drift_psi")
    expected_high = quality.psi(quality.InputDrift(10).expected, quality.proportions([0] * 7 + [10]))
    assert high == pytest.approx(expected_high) and high > 0.25
    assert low < high
