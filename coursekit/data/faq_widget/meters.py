"""faq-widget 의 계측: OpenTelemetry SDK 의 MeterProvider 하나, Prometheus 로 내보내는 reader, 계기(instrument)들.

이름은 OpenTelemetry GenAI 시맨틱 컨벤션(gen_ai.*)을 따르고, Prometheus 로 나갈 때 점은 밑줄이 되고
단위가 붙습니다: gen_ai.client.operation.duration (unit "s") -> gen_ai_client_operation_duration_seconds.
"""

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

# LLM 지연 시간용 버킷: 0.01 s 에서 두 배씩 81.92 s 까지 (GenAI 컨벤션이 권하는 경계, 14개).
LATENCY_BOUNDS = [round(0.01 * 2**i, 2) for i in range(14)]
# 토큰 수 버킷: 1, 4, 16, ... 4^13 (GenAI 컨벤션이 권하는 경계).
TOKEN_BOUNDS = [4**i for i in range(14)]
STAR_BOUNDS = [1, 2, 3, 4, 5]

widget_reader = PrometheusMetricReader()  # prometheus_client 의 기본 REGISTRY 에 등록됨
provider = MeterProvider(
    metric_readers=[widget_reader],
    views=[
        # FastAPI 가 기록하는 HTTP 요청 시간: FastAPI 의 기본 버킷은 10 s 에서 끝나므로 바꿉니다.
        View(instrument_name="http.server.request.duration",
             aggregation=ExplicitBucketHistogramAggregation(LATENCY_BOUNDS)),
        View(instrument_name="gen_ai.client.operation.duration",
             aggregation=ExplicitBucketHistogramAggregation(LATENCY_BOUNDS)),
        View(instrument_name="gen_ai.client.token.usage",
             aggregation=ExplicitBucketHistogramAggregation(TOKEN_BOUNDS)),
        View(instrument_name="widget.judge.score", aggregation=ExplicitBucketHistogramAggregation(STAR_BOUNDS)),
        View(instrument_name="widget.vote.stars", aggregation=ExplicitBucketHistogramAggregation(STAR_BOUNDS)),
    ],
)
meter = provider.get_meter("faq-widget")

# --- GenAI 시맨틱 컨벤션의 계기 (LLM 호출 하나마다)
llm_duration = meter.create_histogram(
    "gen_ai.client.operation.duration", unit="s", description="LLM 호출 한 번의 시간 (재시도 포함)")
llm_tokens = meter.create_histogram(
    "gen_ai.client.token.usage", unit="{token}", description="LLM 호출 한 번의 입력/출력 토큰 수")

# --- 이 서비스만의 계기 (단위가 없는 이름: 이름에 단위를 적음)
cost_usd = meter.create_counter("widget.cost.usd", description="LLM 비용 (USD, 날짜가 있는 단가표로 계산)")
replies = meter.create_counter("widget.replies", description="답한 질문 수 (refused=거절했는지)")
votes = meter.create_counter("widget.votes", description="받은 평가 수 (helpful=true/false)")
vote_stars = meter.create_histogram("widget.vote.stars", description="평가의 별점 1..5 (선택)")
judge_score = meter.create_histogram("widget.judge.score", description="판정 모델이 매긴 점수 1..5 (표본)")
input_drift = meter.create_gauge("widget.input.drift.psi", description="최근 질문 길이 분포의 PSI (기준 대비)")

GENAI = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "gcp.gemini"}


def record_call(model: str, seconds: float, usage: dict | None, error_type: str | None = None) -> None:
    """LLM 호출 한 번을 기록합니다: 시간은 성공/실패 모두, 토큰은 성공했을 때 usage_metadata 로."""
    attrs = {**GENAI, "gen_ai.request.model": model}
    llm_duration.record(seconds, {**attrs, "error.type": error_type} if error_type else attrs)
    if usage:
        llm_tokens.record(usage["input_tokens"], {**attrs, "gen_ai.token.type": "input"})
        # output_tokens 에는 사고(thinking) 토큰이 이미 들어 있습니다: output_token_details.reasoning 을 더하지 않습니다.
        llm_tokens.record(usage["output_tokens"], {**attrs, "gen_ai.token.type": "output"})
