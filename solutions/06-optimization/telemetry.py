"""메트릭: OpenTelemetry SDK 로 재고, Prometheus 형식으로 내보냅니다 (GET /metrics).

    FastAPI(telemetry=...)          요청마다 http.server.request.duration (지연 시간, 요청 수, 오류) 을 FastAPI 가 기록
    record_operation()              LLM 호출 한 번의 시간과 실패 종류     gen_ai.client.operation.duration
    record_usage()                  usage_metadata 의 토큰과 그 비용      gen_ai.client.token.usage, llm.cost.usd
    record_answer(), record_feedback(), record_judge(), set_drift()      품질 신호 (quality.py 가 계산)

PrometheusMetricReader 가 OpenTelemetry 의 이름을 Prometheus 규칙으로 바꿉니다: 점은 밑줄, 단위 "s" 는 `_seconds`,
카운터는 `_total` (예: gen_ai.client.operation.duration -> gen_ai_client_operation_duration_seconds).
라벨(속성)에는 값의 종류가 정해진 것만 씁니다: 질문, 사용자 id, 응답 id, 키는 절대 라벨이 아닙니다.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

logger = logging.getLogger("llm-chat")

PRICES_PATH = Path(__file__).resolve().parent / "eval" / "prices.toml"

# GenAI 시맨틱 컨벤션이 권하는 LLM 지연 시간 버킷 (초): 0.01 에서 두 배씩 81.92 까지 14개.
# prometheus_client 의 기본 버킷은 10 초에서, OpenTelemetry SDK 의 기본 버킷은 밀리초용 [0, 5, 10, 25, ...] 라
# LLM 지연 시간에는 맞지 않습니다.
LLM_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
# gen_ai.client.token.usage 의 권장 버킷: 1 에서 네 배씩 67108864 (4^13) 까지.
TOKEN_BUCKETS = [4**i for i in range(14)]
# 1~5 점 점수 (피드백 점수, 판정 점수): 점수마다 한 버킷.
SCORE_BUCKETS = [1, 2, 3, 4, 5]

PROVIDER = "gcp.gemini"  # gen_ai.provider.name (시맨틱 컨벤션의 값)
OPERATION = "chat"       # gen_ai.operation.name

# 읽는 쪽: Prometheus 가 GET /metrics 를 긁어 가면 prometheus_client 의 REGISTRY 가 이 리더의 값을 내보냅니다.
reader = PrometheusMetricReader()
# FastAPI 가 만드는 http.server.request.duration 의 버킷은 FastAPI 가 정하므로(10 초까지), View 로 바꿉니다.
VIEWS = [View(instrument_name="http.server.request.duration",
              aggregation=ExplicitBucketHistogramAggregation(LLM_BUCKETS))]
provider = MeterProvider(metric_readers=[reader], views=VIEWS,
                         resource=Resource.create({"service.name": "llm-chat"}))
meter = provider.get_meter("llm-chat")

# FastAPI(telemetry=FASTAPI_TELEMETRY): FastAPI 가 이 provider 로 HTTP 메트릭만 기록합니다 (추적과 로그는 끔).
# /metrics 자신은 세지 않습니다 (Prometheus 가 긁을 때마다 요청 수가 늘면 트래픽이 왜곡됨).
FASTAPI_TELEMETRY = {
    "meter_provider": provider,
    "tracing": False,
    "logs": False,
    "operation_spans": False,
    "exclude": lambda scope: scope.get("path") == "/metrics",
}

# --- GenAI 시맨틱 컨벤션의 계측기 (이름, 단위, 속성 이름이 컨벤션 그대로) --------------------------------
operation_duration = meter.create_histogram(
    "gen_ai.client.operation.duration", unit="s", description="LLM 호출 한 번(재시도 포함)의 시간",
    explicit_bucket_boundaries_advisory=LLM_BUCKETS)
token_usage = meter.create_histogram(
    "gen_ai.client.token.usage", unit="{token}", description="LLM 호출 한 번의 입력/출력 토큰 수",
    explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
# 비용에는 단위를 붙이지 않습니다 (이름에 usd): Prometheus 이름은 llm_cost_usd_total.
cost_usd = meter.create_counter("llm.cost.usd", description="LLM 호출 비용 (USD, eval/prices.toml 의 단가)")

# --- 품질 신호 (quality.py) ---------------------------------------------------------------------------
answers = meter.create_counter("llm.answers", description="/chat 이 돌려준 답 (refused: 거절 문구가 있는 답)")
feedback = meter.create_counter("llm.feedback", description="받아들인 사용자 피드백 (rating: up/down)")
feedback_score = meter.create_histogram("llm.feedback.score", description="피드백의 1~5 점 점수",
                                        explicit_bucket_boundaries_advisory=SCORE_BUCKETS)
judge_score = meter.create_histogram("llm.judge.score", description="판정 모델(LLM-as-a-judge)이 매긴 1~5 점",
                                     explicit_bucket_boundaries_advisory=SCORE_BUCKETS)
input_drift = meter.create_gauge("llm.input.drift.psi", description="최근 질문 길이 분포의 PSI (기준: 평가 세트)")
input_drift.set(0.0)


def load_prices(path: Path = PRICES_PATH) -> dict[str, tuple[float, float]]:
    """eval/prices.toml: {모델: (입력 USD/100만 토큰, 출력 USD/100만 토큰)} (03단계의 평가 게이트와 같은 표)."""
    with open(path, "rb") as fh:
        models = tomllib.load(fh)["models"]
    return {name: (float(p["input_usd_per_1m"]), float(p["output_usd_per_1m"])) for name, p in models.items()}


PRICES = load_prices()


def _model_attrs(model: str) -> dict[str, str]:
    return {"gen_ai.operation.name": OPERATION, "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": model}


def record_operation(model: str, seconds: float, error_type: str | None = None) -> None:
    """LLM 호출 한 번 (langchain 의 재시도를 포함한 ainvoke 한 번). 실패면 error.type 에 서비스의 오류 코드."""
    attrs = _model_attrs(model)
    if error_type is not None:
        attrs["error.type"] = error_type
    operation_duration.record(seconds, attrs)


def call_cost(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """토큰의 비용 (USD). 가격표에 없는 모델이면 None."""
    if model not in PRICES:
        return None
    input_price, output_price = PRICES[model]
    return (input_tokens * input_price + output_tokens * output_price) / 1_000_000


_unpriced: set[str] = set()


def record_usage(model: str, usage: dict | None) -> None:
    """성공한 호출의 usage_metadata (input_tokens, output_tokens) 로 토큰 수와 비용을 기록합니다."""
    usage = usage or {}
    input_tokens = int(usage.get("input_tokens", 0))
    # 사고(thinking) 토큰은 output_tokens 에 이미 들어 있습니다 (output_token_details.reasoning 은 그 내역):
    # 다시 더하면 두 번 세고, 출력 단가로 과금되므로 비용도 부풀려집니다.
    output_tokens = int(usage.get("output_tokens", 0))
    attrs = _model_attrs(model)
    token_usage.record(input_tokens, {**attrs, "gen_ai.token.type": "input"})
    token_usage.record(output_tokens, {**attrs, "gen_ai.token.type": "output"})
    cost = call_cost(model, input_tokens, output_tokens)
    if cost is None:
        if model not in _unpriced:
            _unpriced.add(model)
            logger.warning("eval/prices.toml 에 모델 %s 의 단가가 없어 비용을 기록하지 않습니다", model)
        return
    cost_usd.add(cost, {"gen_ai.request.model": model})


def record_answer(model: str, refused: bool) -> None:
    answers.add(1, {"gen_ai.request.model": model, "refused": "true" if refused else "false"})


def record_feedback(rating: str, score: int | None) -> None:
    feedback.add(1, {"rating": rating})
    if score is not None:
        feedback_score.record(score)


def record_judge(model: str, score: int) -> None:
    """model = 채점한 답을 낸 모델 (판정 모델이 아님: 판정 호출 자체는 record_operation 에 판정 모델로)."""
    judge_score.record(score, {"gen_ai.request.model": model})


def set_drift(psi: float) -> None:
    input_drift.set(psi)
# BEGIN SOLUTION


# 06단계: 안정성 메트릭. Prometheus 이름은 llm_fallbacks_total, llm_ratelimit_errors_total, llm_ratelimit_rejections_total,
# llm_requests_shed_total (카운터는 _total 이 붙음). 라벨에 키나 클라이언트 id 는 넣지 않습니다 (값의 종류가 끝이 없음).
fallbacks = meter.create_counter("llm.fallbacks", description="Fallback 모델로 넘어간 /chat (reason: error, timeout, circuit_open)")
ratelimit_errors = meter.create_counter("llm.ratelimit.errors",
                                        description="한도 저장소(Redis) 오류: 그 요청은 한도 없이 통과 (fail open)")
ratelimit_rejections = meter.create_counter("llm.ratelimit.rejections", description="API 키별 한도로 429 를 낸 요청")
requests_shed = meter.create_counter("llm.requests.shed", description="동시 처리 한도(MAX_IN_FLIGHT)로 503 overloaded 를 낸 요청")


def record_fallback(primary_model: str, reason: str) -> None:
    """primary_model = 실패한 주 모델 (gen_ai_request_model 라벨), reason = error | timeout | circuit_open."""
    fallbacks.add(1, {"gen_ai.request.model": primary_model, "reason": reason})


def record_ratelimit_error() -> None:
    ratelimit_errors.add(1)


def record_ratelimit_rejection() -> None:
    ratelimit_rejections.add(1)


def record_shed() -> None:
    requests_shed.add(1)


# STARTER
# # TODO 4 (lesson §3 '서킷 브레이커와 Fallback'): Fallback 카운터 llm.fallbacks (라벨 gen_ai.request.model, reason)와
# # record_fallback(primary_model, reason) 을 만드세요. §5, §6 의 카운터(llm.ratelimit.errors, llm.ratelimit.rejections,
# # llm.requests.shed)도 여기에.
# END SOLUTION
# BEGIN SOLUTION


# 06단계 2부: 캐시 (lesson §11) 와 스트리밍 (lesson §12). Prometheus 이름은 llm_cache_requests_total{result} 와
# llm_time_to_first_token_seconds{gen_ai_request_model} (LLM 지연 시간과 같은 버킷).
cache_requests = meter.create_counter(
    "llm.cache.requests", description="/chat 의 응답 캐시 (result: hit, miss, coalesced, error = 저장소 오류)")
time_to_first_token = meter.create_histogram(
    "llm.time_to_first_token", unit="s", description="/chat/stream 이 첫 조각을 보내기까지의 시간",
    explicit_bucket_boundaries_advisory=LLM_BUCKETS)


def record_cache(result: str) -> None:
    """result = hit | miss | coalesced | error (값의 종류가 정해진 라벨 하나)."""
    cache_requests.add(1, {"result": result})


def record_ttft(model: str, seconds: float) -> None:
    time_to_first_token.record(seconds, {"gen_ai.request.model": model})


# STARTER
# # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): 카운터 llm.cache.requests (라벨 result: hit, miss, coalesced, error)와
# # record_cache(result). TODO 18 (lesson §12 '스트리밍'): 히스토그램 llm.time_to_first_token (단위 s, LLM_BUCKETS,
# # 라벨 gen_ai.request.model)과 record_ttft(model, seconds).
# END SOLUTION
# BEGIN SOLUTION


# 06단계 2부: 배치 (lesson §13), 토큰 예산 (§14), A/B 테스트 (§15), 카나리 (§16). Prometheus 이름은
# llm_batch_size (히스토그램), llm_truncated_answers_total{gen_ai_request_model}, llm_experiment_requests_total{experiment,
# variant}, llm_experiment_feedback_total{experiment, variant, rating}, llm_experiment_judge_score (히스토그램),
# llm_experiment_cost_usd_total{experiment, variant}, llm_canary_requests_total{role, outcome},
# llm_canary_rollbacks_total{reason}, llm_canary_active (게이지). 변형 이름은 설정에 적힌 것만 (사용자 id 는 절대 아님).
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]
batch_size = meter.create_histogram("llm.batch.size", description="POST /chat/batch 하나의 질문 수",
                                    explicit_bucket_boundaries_advisory=BATCH_BUCKETS)
truncated_answers = meter.create_counter(
    "llm.truncated_answers", description="MAX_OUTPUT_TOKENS 에서 잘린 답 (finish_reason MAX_TOKENS)")
experiment_requests = meter.create_counter("llm.experiment.requests", description="A/B 실험의 변형별 답")
experiment_feedback = meter.create_counter("llm.experiment.feedback",
                                           description="A/B 실험의 변형별 피드백 (rating: up/down)")
experiment_judge_score = meter.create_histogram("llm.experiment.judge_score", description="A/B 실험의 변형별 판정 점수",
                                                explicit_bucket_boundaries_advisory=SCORE_BUCKETS)
experiment_cost = meter.create_counter("llm.experiment.cost.usd", description="A/B 실험의 변형별 LLM 비용 (USD)")
canary_requests = meter.create_counter("llm.canary.requests",
                                       description="카나리 판정에 든 결과 (role: canary/baseline, outcome: ok/error)")
canary_rollbacks = meter.create_counter("llm.canary.rollbacks", description="카나리 자동 롤백 (reason: error_rate/quality)")
canary_active = meter.create_gauge("llm.canary.active", description="1 = 카나리 모델로 요청의 일부를 보내는 중, 0 = 꺼짐/롤백")
canary_active.set(0)


def record_batch(size: int) -> None:
    batch_size.record(size)


def record_truncated(model: str) -> None:
    truncated_answers.add(1, {"gen_ai.request.model": model})


def record_experiment(experiment: str, variant: str, cost: float | None = None) -> None:
    """답 하나. cost = 이 답을 위해 새로 낸 업스트림 비용 (캐시의 답이면 None: 비용 없음)."""
    experiment_requests.add(1, {"experiment": experiment, "variant": variant})
    if cost is not None:
        experiment_cost.add(cost, {"experiment": experiment, "variant": variant})


def record_experiment_feedback(experiment: str, variant: str, rating: str) -> None:
    experiment_feedback.add(1, {"experiment": experiment, "variant": variant, "rating": rating})


def record_experiment_judge(experiment: str, variant: str, score: int) -> None:
    experiment_judge_score.record(score, {"experiment": experiment, "variant": variant})


def record_canary(role: str, ok: bool) -> None:
    canary_requests.add(1, {"role": role, "outcome": "ok" if ok else "error"})


def record_canary_rollback(reason: str) -> None:
    canary_rollbacks.add(1, {"reason": reason})
    canary_active.set(0)


def set_canary_active(active: bool) -> None:
    canary_active.set(1 if active else 0)


# STARTER
# # TODO 19 (lesson §13 '배치 처리'): 히스토그램 llm.batch.size (버킷 1, 2, 4, 8, 16, 32, 64)와 record_batch(size).
# # TODO 20 (lesson §14 '토큰 예산'): 카운터 llm.truncated_answers (라벨 gen_ai.request.model)와 record_truncated(model).
# # TODO 22 (lesson §15 'A/B 테스트'): llm.experiment.requests, llm.experiment.feedback, llm.experiment.judge_score,
# # llm.experiment.cost.usd (라벨 experiment, variant, 피드백은 rating 도)와 record_experiment* 함수들.
# # TODO 25 (lesson §16 '카나리 모델 업데이트'): llm.canary.requests (role, outcome), llm.canary.rollbacks (reason),
# # 게이지 llm.canary.active 와 record_canary, record_canary_rollback, set_canary_active.
# END SOLUTION


def metrics_body() -> tuple[bytes, str]:
    """GET /metrics 의 본문과 Content-Type (Prometheus 텍스트 형식 0.0.4)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_PLAIN_0_0_4
