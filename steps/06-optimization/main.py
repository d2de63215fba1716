"""LLM 채팅 API: FastAPI 서비스가 Gemini(또는 코스 시뮬레이터)를 감쌉니다.

실행:  uvicorn main:app --host 127.0.0.1 --port 8000
설정:  환경 변수 또는 .env 파일 (.env.example 을 복사해서 쓰세요)
문서:  http://127.0.0.1:8000/docs
"""

import math
import secrets
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
import httpx2
from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from google.genai.errors import ServerError
from langchain_core.exceptions import ModelRateLimitError
from langchain_google_genai import ChatGoogleGenerativeAI
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from pathlib import Path

from langchain_core.messages import HumanMessage, SystemMessage
import asyncio
import logging
import random
import time
from typing import Literal

from fastapi.responses import Response

import quality
import telemetry

import structlog
from opentelemetry.trace import SpanKind, StatusCode
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

import observability
import prompt_store
# TODO 1 (lesson §2 '데드라인 있는 재시도'): 06단계의 모듈을 가져오세요: pybreaker (§3), limits (§5), resilience.py (§5, §7).
# TODO 13 (lesson §11 '응답 캐시와 요청 합치기'): caching.py (§11) 와 FastAPI 의 SSE (fastapi.sse 의
# EventSourceResponse, ServerSentEvent: §12 '스트리밍') 를 가져오세요.
# TODO 19 (lesson §13 '배치 처리'): LangChain 의 RunnableLambda (abatch 가 동시 처리 상한을 지킴)를 가져오세요.
# TODO 22, 25 (lesson §15 'A/B 테스트', §16 '카나리 모델 업데이트'): experiments.py 와 canary.py 를 가져오세요.

logger = logging.getLogger("llm-chat")

MAX_BODY_BYTES = 64 * 1024  # 요청 본문 상한: 64 KiB


class Settings(BaseSettings):
    """환경 변수(없으면 .env 파일)에서 읽는 설정. 비밀 값은 SecretStr 로 감춥니다."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    google_api_key: SecretStr  # Gemini API 키 (시뮬레이터에서는 아무 ASCII 키, 예: sim-any-key)
    google_gemini_base_url: str | None = None  # 비우면 Google, 시뮬레이터면 http://127.0.0.1:PORT
    service_api_key: SecretStr  # 이 서비스의 클라이언트가 X-API-Key 헤더로 보낼 키
    llm_model: str = "gemini-3.5-flash"
    llm_timeout_seconds: float = Field(default=10, gt=0)
    llm_max_attempts: int = Field(default=2, ge=1)  # 업스트림 호출 총 시도 횟수 (첫 시도 포함)
    max_message_chars: int = Field(default=4000, ge=1)
    # 시스템 프롬프트의 버전 = prompts/<버전>.txt. 경로를 넘나드는 값(../)은 받지 않습니다.
    prompt_version: str = Field(default="v2", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # 품질 신호 (lesson §6, §7): 판정 모델, 판정할 답의 비율(0 이면 끔), 입력 드리프트를 재는 최근 메시지 수.
    judge_model: str = "gemini-3.5-flash-judge"
    judge_sample_rate: float = Field(default=0.1, ge=0, le=1)
    drift_window: int = Field(default=200, ge=10)
    # 로그 (lesson §2): JSON 줄 로그를 쓸 폴더(app.jsonl, prompts.jsonl)와 최소 레벨.
    log_dir: str = "logs"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # 오류 추적 (lesson §9): 비우면 Sentry 로 아무것도 보내지 않음.
    sentry_dsn: SecretStr | None = None
    # 프롬프트 암호화 (lesson §4): 쉼표로 구분한 Fernet 키들 (첫 키가 암호화). 비우면 질문과 답을 저장하지 않음.
    prompt_encryption_keys: SecretStr | None = None
    # TODO 1 (lesson §2 '데드라인 있는 재시도'): 06단계 설정을 더하세요 (README 의 설정 표):
    # request_deadline_seconds (2.5), fallback_model ("gemini-3.5-flash-lite"), fallback_reserve_seconds (0.8),
    # circuit_fail_max (5), circuit_reset_seconds (10), rate_limit ("60/minute"), redis_url (None),
    # service_api_keys (SecretStr | None), max_in_flight (32).
    # TODO 13 (lesson §11 '응답 캐시와 요청 합치기'): 설정 cache_ttl_seconds (300, 0 이면 끔)와 cache_max_entries (10000).
    # TODO 19 (lesson §13 '배치 처리'): 설정 batch_max_items (16), batch_concurrency (4).
    # TODO 20 (lesson §14 '토큰 예산'): max_output_tokens (1024, 비우면 None = 상한 없음), thinking_budget (None).
    # TODO 22 (lesson §15 'A/B 테스트'): ab_experiment ("" = 끔), ab_variants (JSON, experiments.Variant).
    # TODO 25 (lesson §16 '카나리 모델 업데이트'): canary_model (""), canary_share (0.05), canary_min_requests (20),
    # canary_window_seconds (300), canary_max_error_increase (0.05), canary_max_score_drop (0.5).
    # A/B 와 카나리를 함께 켜면 서비스가 시작하지 않게 하세요 (한 번에 하나만 바꿈).

    @field_validator("google_api_key", "service_api_key")
    @classmethod
    def ascii_only(cls, value: SecretStr) -> SecretStr:
        # 키는 HTTP 헤더로 전달되므로 ASCII 여야 합니다 (한글 자리표시자를 그대로 쓰면 모든 요청이 실패).
        if not value.get_secret_value().isascii():
            raise ValueError("키에는 ASCII 문자만 쓸 수 있습니다 (HTTP 헤더로 전달됨)")
        return value


settings = Settings()

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"


def load_prompt(version: str) -> str:
    """prompts/<version>.txt 의 시스템 프롬프트. 없거나 비어 있으면 서비스가 시작하지 않습니다
    (요청마다 500 을 내는 것보다 배포가 바로 실패하는 편이 낫습니다)."""
    path = PROMPTS_DIR / f"{version}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))) or "없음"
        raise RuntimeError(f"PROMPT_VERSION={version!r} 의 프롬프트 파일 {path} 가 없습니다 (있는 버전: {known})")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise RuntimeError(f"프롬프트 파일 {path} 가 비어 있습니다")
    return text


SYSTEM_PROMPT = load_prompt(settings.prompt_version)
# TODO 22 (lesson §15 'A/B 테스트'): 실험이 켜져 있으면 변형마다 프롬프트를 시작할 때 읽으세요
# (experiments.check_prompts(settings.ab_variants, load_prompt)).

# 관측 설정 (앱을 만들기 전에): JSON 로그, LangSmith 숨기기, Sentry, 추적. 키는 Sentry 이벤트에서 가릴 값으로만 넘깁니다.
observability.configure_logging(settings.log_dir, settings.log_level)
observability.hide_langsmith_payloads()
observability.init_sentry(
    settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None,
    secrets=[settings.google_api_key.get_secret_value(), settings.service_api_key.get_secret_value(),
    # TODO 6 (lesson §5): SERVICE_API_KEYS 의 키들도 Sentry 이벤트에서 가릴 값으로.
             *(settings.prompt_encryption_keys.get_secret_value().split(",") if settings.prompt_encryption_keys else [])],
)
TRACER_PROVIDER = observability.tracer_provider()
tracer = TRACER_PROVIDER.get_tracer("llm-chat")
PROMPT_FERNET = prompt_store.keyring(settings.prompt_encryption_keys)


class ChatRequest(BaseModel):
    """POST /chat 요청 본문."""

    model_config = ConfigDict(
        extra="forbid",  # 모르는 필드는 422
        json_schema_extra={"examples": [{"message": "MLOps 가 무엇인가요?"}]},
    )

    message: str = Field(
        min_length=1,
        max_length=settings.max_message_chars,
        description="사용자 질문 (공백만으로 된 문자열은 안 됨)",
    )
    # 누가 물었는지 (06단계의 A/B 테스트가 씀). 메트릭의 라벨로는 절대 쓰지 않습니다 (값의 종류가 끝이 없음).
    user_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:@-]{1,64}$", description="선택: 사용자 id")

    @field_validator("message")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("메시지가 비어 있습니다 (공백만 있음)")
        return value


class Usage(BaseModel):
    input_tokens: int = Field(description="프롬프트 토큰 수")
    output_tokens: int = Field(description="답변 토큰 수")
    total_tokens: int = Field(description="합계")


class ChatResponse(BaseModel):
    """POST /chat 성공 응답."""

    response: str = Field(description="LLM 의 답변")
    model: str = Field(description="답변한 모델 이름")
    prompt_version: str = Field(description="답변에 쓴 시스템 프롬프트 버전 (PROMPT_VERSION)")
    usage: Usage
    response_id: str = Field(description="이 답의 id (32자리 16진수): POST /feedback 에 그대로 보냅니다")
    # TODO 4 (lesson §3 '서킷 브레이커와 Fallback'): Fallback 이 답한 응답을 표시할 필드 fallback: bool (기본 False).
    # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): 캐시에서 온 답을 표시할 필드 cached: bool (기본 False).
    # TODO 20 (lesson §14 '토큰 예산'): 잘린 답을 표시할 필드 truncated: bool (기본 False).
    # TODO 22 (lesson §15 'A/B 테스트'): 답한 변형 variant: str | None (기본 None).


class ErrorDetail(BaseModel):
    code: str = Field(description="기계가 읽는 오류 코드 (예: unauthorized, upstream_timeout)")
    message: str = Field(description="사람이 읽는 한국어 설명")


class ErrorResponse(BaseModel):
    """모든 오류 응답의 모양: {"error": {"code": ..., "message": ...}}"""

    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str = Field(description="항상 ok")
    model: str = Field(description="설정된 모델 이름")
    prompt_version: str = Field(description="설정된 시스템 프롬프트 버전 (PROMPT_VERSION)")


class FeedbackRequest(BaseModel):
    """POST /feedback 요청 본문: 이 서비스가 낸 답 하나에 대한 사용자의 평가."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"response_id": "0f8e1c2b3a4d5e6f708192a3b4c5d6e7", "rating": "up", "score": 5}]},
    )

    response_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="/chat 응답의 response_id")
    rating: Literal["up", "down"] = Field(description="좋아요(up) 또는 싫어요(down)")
    score: int | None = Field(default=None, ge=1, le=5, strict=True, description="선택: 1~5 점")
    comment: str | None = Field(default=None, max_length=1000, description="선택: 의견 (메트릭에는 들어가지 않음)")


class FeedbackResponse(BaseModel):
    response_id: str
    rating: str
    recorded: bool = Field(description="피드백을 기록했는지 (항상 true)")
# TODO 19 (lesson §13 '배치 처리'): 본문 BatchRequest (messages: 1~BATCH_MAX_ITEMS 개, 각각 ChatRequest.message 와
# 같은 규칙, 선택 user_id)와 응답 BatchResponse (results: 성공 {"ok": true, ...ChatResponse} 또는 실패
# {"ok": false, "error": {"code", "message"}}) 를 만드세요.


class ApiError(Exception):
    """정해진 상태 코드와 JSON 오류 본문으로 바뀌는 예외."""

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(code)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message))
    observability.note(error_code=code)  # 이 요청의 로그 줄에
    return JSONResponse(status_code=status_code, content=body.model_dump(), headers=headers)
# TODO 18, 19 (lesson §12 '스트리밍', §13 '배치 처리'): 새 경로의 오류 응답을 OpenAPI 에 application/json 의
# ErrorResponse 로 적는 json_error_doc(설명, validation=False) 를 만드세요 (SSE 경로도 오류는 스트림 전의 JSON).


# Starlette/FastAPI 가 직접 내는 HTTP 오류 (404, 405, 413 ...) 도 같은 모양으로 바꿉니다.
HTTP_ERRORS = {
    404: ("not_found", "요청한 경로가 없습니다."),
    405: ("method_not_allowed", "허용되지 않는 HTTP 메서드입니다."),
    413: ("payload_too_large", f"요청 본문이 너무 큽니다 (최대 {MAX_BODY_BYTES // 1024} KiB)."),
}

# google-genai 3.x 는 기본으로 httpx2 를 씁니다 (GOOGLE_GENAI_HTTP_CLIENT=httpx 이면 httpx).
# 타임아웃은 SDK 가 감싸지 않은 httpx2.ReadTimeout 등으로 올라오므로 둘 다 잡습니다.
UPSTREAM_TIMEOUTS = (httpx2.TimeoutException, httpx.TimeoutException)
# TODO 5 (lesson §4 '업스트림의 이상한 답'): SAFETY 로 막힌 답(finish_reason), 후보가 없거나 빈 답, 깨진 본문
# (json.JSONDecodeError)을 구분할 예외와 check_reply(reply) 를 만드세요. 500 이 나가면 안 됩니다.


def retry_after_seconds(exc: Exception, default: int = 5) -> int:
    """Gemini 429 응답의 RetryInfo.retryDelay (예: "17s") 를 Retry-After 초로 바꿉니다."""
    details = getattr(exc.__cause__, "details", None)  # google.genai ClientError 의 응답 JSON
    try:
        for item in details["error"]["details"]:
            if item.get("@type", "").endswith("google.rpc.RetryInfo"):
                return max(1, math.ceil(float(item["retryDelay"].removesuffix("s"))))
    except (TypeError, KeyError, ValueError, AttributeError):
        pass
    return default


def error_type(exc: BaseException) -> str:
    """LLM 호출 실패의 종류 = 클라이언트가 받는 오류 코드 (아래 chat() 의 except 절과 같은 분류)."""
    # TODO 5 (lesson §4 '업스트림의 이상한 답'): 새 실패의 종류 content_blocked, upstream_malformed,
    # upstream_bad_request, upstream_unavailable, 그리고 데드라인(TimeoutError)의 upstream_timeout.
    if isinstance(exc, ModelRateLimitError):
        return "upstream_rate_limited"
    if isinstance(exc, ServerError):
        return "upstream_error"
    if isinstance(exc, UPSTREAM_TIMEOUTS):
        return "upstream_timeout"
    return "internal_error"


# TODO 2 (lesson §2 '데드라인 있는 재시도'): 재시도할 실패와 하지 않을 실패를 나누세요: 깨진 본문/빈 답과
# 데드라인의 TimeoutError 는 재시도, 400 계열(ModelInvalidRequestError)과 SAFETY 차단은 절대 재시도하지 않음.
def retryable(exc: BaseException) -> bool:
    """다시 시도할 실패: 429, 5xx, 시간 초과, 연결 실패 (google-genai 의 기본 재시도와 같은 기준).
    요청이 틀린 4xx 나 깨진 응답은 다시 보내도 같으므로 바로 실패합니다."""
    return isinstance(exc, (ModelRateLimitError, ServerError, *UPSTREAM_TIMEOUTS, httpx2.ConnectError, httpx.ConnectError))


async def attempt_llm(llm, messages: list, model: str):
    """업스트림 시도 한 번 = LLM 스팬 하나 (GenAI 시맨틱 컨벤션: 이름 "chat <모델>", CLIENT 스팬).
    이 스팬이 현재 스팬인 동안 나가는 HTTP 요청에 observability.add_upstream_headers 가 traceparent 를 넣습니다.
    질문과 답(gen_ai.input.messages, gen_ai.output.messages)은 스팬에 넣지 않습니다."""
    attributes = {"gen_ai.operation.name": telemetry.OPERATION, "gen_ai.provider.name": telemetry.PROVIDER,
                  "gen_ai.request.model": model}
    with tracer.start_as_current_span(f"{telemetry.OPERATION} {model}", kind=SpanKind.CLIENT, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False) as span:
        try:
            reply = await llm.ainvoke(messages)
        # TODO 5 (lesson §4 '업스트림의 이상한 답'): 답을 check_reply 로 보고, 데드라인에 끊긴 시도
        # (asyncio.CancelledError)도 스팬에 실패로 남기세요.
        except Exception as exc:
            span.set_attribute("error.type", error_type(exc))
            span.set_status(StatusCode.ERROR, type(exc).__name__)  # 예외 메시지는 넣지 않음
            raise
        usage = reply.usage_metadata or {}
        span.set_attributes({"gen_ai.usage.input_tokens": int(usage.get("input_tokens", 0)),
                             "gen_ai.usage.output_tokens": int(usage.get("output_tokens", 0))})
        return reply


# TODO 3 (lesson §2 '데드라인 있는 재시도'): invoke_llm 이 시간 예산의 끝(until, loop.time() 기준), 서킷 브레이커,
# Sentry 로 보낼지(capture), 시도 횟수를 돌려줄 dict(stats)를 받게 하세요.
async def invoke_llm(llm, messages: list, model: str):
    """LLM 호출 한 번: 서비스가 시도를 직접 돌립니다 (클라이언트의 재시도는 max_retries=1 로 끔). 총 시도는
    LLM_MAX_ATTEMPTS 번, 시도마다 스팬 하나. 메트릭은 04단계와 같이 호출(모든 시도) 한 번에 하나."""
    started = time.perf_counter()
    attempts = 0
    observability.note(model=model, prompt_version=settings.prompt_version)
    try:
        # google-genai 의 기본 재시도와 같은 대기: 1초에서 두 배씩, 최대 60초, 0~1초 흔들기(jitter).
        # TODO 3 (lesson §2 '데드라인 있는 재시도'): 데드라인 안에서만 재시도하세요: 시도마다 asyncio.timeout(남은 시간),
        # 대기는 작게(0.1 초에서 최대 0.5 초, 지터), 대기 뒤 남은 시간이 모자라면 멈춤, 429 의 RetryInfo 는 들어갈 때만.
        async for attempt in AsyncRetrying(stop=stop_after_attempt(settings.llm_max_attempts),
                                           retry=retry_if_exception(retryable),
                                           wait=wait_exponential_jitter(initial=1, max=60, exp_base=2, jitter=1),
                                           reraise=True):
            with attempt:
                attempts += 1
                reply = await attempt_llm(llm, messages, model)
    except Exception as exc:
        kind = error_type(exc)
        observability.note(attempts=attempts)
        telemetry.record_operation(model, time.perf_counter() - started, error_type=kind)
        # TODO 3 (lesson §3): Fallback 이 있으면 Sentry 이벤트는 요청의 마지막 실패 하나만 (capture=False 면 보내지 않음).
        if kind != "internal_error" and observability.in_request():
            # 재시도가 모두 끝난 업스트림 실패 = 502/503/504 응답 하나 = Sentry 이벤트 하나 (판정 호출은 제외)
            observability.capture_upstream_failure(exc, structlog.contextvars.get_contextvars().get("request_id"))
        raise
    telemetry.record_operation(model, time.perf_counter() - started)
    telemetry.record_usage(model, reply.usage_metadata)
    usage = reply.usage_metadata or {}
    input_tokens, output_tokens = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    observability.note(attempts=attempts, input_tokens=input_tokens, output_tokens=output_tokens,
                       cost_usd=telemetry.call_cost(model, input_tokens, output_tokens))
    return reply
# TODO 4 (lesson §3 '서킷 브레이커와 Fallback'): pybreaker.CircuitBreaker(CIRCUIT_FAIL_MAX, CIRCUIT_RESET_SECONDS)로
# 주 모델의 시도를 감싸고, 주 모델이 실패하거나(재시도 뒤) 시간이 넘거나 회로가 열려 있으면 FALLBACK_MODEL 을 남은
# 시간으로 부르는 answer_with_fallback(llm, messages) -> (답, 답한 모델) 을 만드세요. 메트릭 llm_fallbacks_total.
# TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): answer_cached(llm, message) -> (답, 답한 모델, "hit"|"miss"|"coalesced")
# 를 만드세요. 키 = caching.cache_key(LLM_MODEL, PROMPT_VERSION, 질문). 캐시에 있으면 업스트림 없이 (hit), 없으면
# caching.Coalescer 로 같은 질문을 한 호출로 합쳐 answer_with_fallback 을 부르고 (miss, 함께 기다린 요청은 coalesced),
# 주 모델의 비지 않은, 거절이 아닌 답만 캐시에 두세요 (오류, Fallback 의 답, 거절, 빈 답은 절대 두지 않음).
# 메트릭 telemetry.record_cache(결과), 로그 줄의 cache. CACHE_TTL_SECONDS=0 이면 answer_with_fallback 그대로 (결과 None).
# TODO 20 (lesson §14 '토큰 예산'): 잘린 답(finish_reason MAX_TOKENS)도 절대 캐시에 두지 마세요.
# TODO 20 (lesson §14 '토큰 예산'): answer_budget() -> {"max_output_tokens": MAX_OUTPUT_TOKENS, "thinking_budget":
# THINKING_BUDGET} 를 답하는 모델의 클라이언트(주, Fallback, 카나리)에 넘기세요 (판정 모델은 아님).
# TODO 22 (lesson §15 'A/B 테스트'): 질문 하나가 갈 곳(Route: 모델, 클라이언트, 프롬프트, 변형)을 고르는
# choose_route(llm, user) 를 만드세요: experiments.assign(AB_EXPERIMENT, user, AB_VARIANTS) 의 변형.
# 캐시의 키에도 변형의 모델과 프롬프트 버전을. 헤더 X-Variant, 로그 줄의 experiment, variant, 메트릭
# telemetry.record_experiment (답마다, 새로 낸 비용과 함께), 판정 점수도 변형별로.
# TODO 25 (lesson §16 '카나리 모델 업데이트'): 카나리가 켜져 있으면 await canary.should_route() 로 CANARY_MODEL 에,
# 결과(ok = 보낸 모델이 답함, 실패 = 5xx 로 끝남 또는 Fallback 이 답함)를 record(role, ok) 와
# telemetry.record_canary 에, 결과마다 await check() (롤백이면 telemetry.record_canary_rollback). 헤더 X-Canary: true,
# 로그 줄의 canary.
# TODO 19 (lesson §13 '배치 처리'): 이 길 전체를 /chat 과 /chat/batch 가 함께 쓰는 함수 하나로 (복사하지 말 것).


# TODO 22 (lesson §15 'A/B 테스트'): 판정 점수를 돌려주게 하세요 (-> int | None).
async def judge_answer(question: str, answer: str, answer_model: str) -> None:
    """판정 모델에게 답 하나를 채점시켜 llm.judge.score 에 기록합니다. 실패해도 클라이언트와 상관없습니다
    (응답은 이미 나갔음): 판정 호출의 실패는 gen_ai.client.operation.duration 의 error.type 으로만 보입니다."""
    try:
        reply = await invoke_llm(app.state.judge_llm, quality.judge_messages(question, answer), settings.judge_model)
    except Exception as exc:
        logger.warning("판정 호출 실패 (%s): %s", error_type(exc), type(exc).__name__)
        return
    score = quality.parse_judge(reply.text)
    if score is None:
        logger.warning("판정 모델의 답을 읽을 수 없습니다: %.200s", reply.text)
        return
    # TODO 22 (lesson §15 'A/B 테스트'): 점수를 돌려주세요 (변형별, 카나리 역할별 점수에 씀).
    telemetry.record_judge(answer_model, score)


def schedule_judge(question: str, answer: str) -> None:
    """판정을 백그라운드 작업으로: 응답을 기다리게 하지 않습니다. 작업은 끝날 때까지 집합에 두어(강한 참조)
    가비지 컬렉션에 사라지지 않게 하고, 종료할 때 lifespan 이 남은 작업을 기다립니다."""
    # 판정은 요청 ID 와 추적을 이어받지만(같은 요청의 일), 요청의 로그 줄(모델, 토큰, 시도 횟수)은 바꾸지 않습니다.
    task = asyncio.create_task(judge_answer(question, answer, settings.llm_model),
                               context=observability.background_context())
    app.state.judge_tasks.add(task)
    task.add_done_callback(app.state.judge_tasks.discard)


@asynccontextmanager
async def lifespan(app: FastAPI):
    # 클라이언트는 시작할 때 하나만 만들고 모든 요청이 같이 씁니다 (연결 풀 재사용).
    # 설정은 모두 Settings 에서 직접 넘깁니다: 클라이언트는 .env 파일을 읽지 않습니다.
    app.state.llm = ChatGoogleGenerativeAI(
        model=settings.llm_model,
        api_key=settings.google_api_key,
        base_url=settings.google_gemini_base_url,  # None 이면 Google (또는 환경 변수 GOOGLE_GEMINI_BASE_URL)
        timeout=settings.llm_timeout_seconds,  # 시도 한 번의 상한 (초)
        # 시도 한 번만 (재시도는 invoke_llm 의 tenacity 가). 1 이 "재시도 없음" (0 은 SDK 기본값 5 가 됨).
        max_retries=1,
        # 나가는 HTTP 요청마다 traceparent 와 X-Request-ID (httpx2 의 요청 훅).
        client_args={"event_hooks": {"request": [observability.add_upstream_headers]}},
        # TODO 20 (lesson §14 '토큰 예산'): 답의 토큰 상한과 사고 토큰 상한 (answer_budget()).
    )
    # 판정 모델 클라이언트: 같은 키와 주소, 결정적인(temperature 0) JSON 답.
    app.state.judge_llm = judge_llm = ChatGoogleGenerativeAI(
        model=settings.judge_model,
        api_key=settings.google_api_key,
        base_url=settings.google_gemini_base_url,
        timeout=settings.llm_timeout_seconds,
        max_retries=1,
        client_args={"event_hooks": {"request": [observability.add_upstream_headers]}},
        temperature=0,
        response_mime_type="application/json",
    )
    app.state.judge_tasks = set()  # 진행 중인 판정 작업 (강한 참조)
    app.state.responses = quality.IssuedResponses()  # 피드백을 받을 응답 id (최근 10 000 개)
    app.state.drift = quality.InputDrift(settings.drift_window)
    # TODO 8 (lesson §6, §8): 시작할 때 Fallback 클라이언트, resilience.RateLimiter, resilience.SharedResponses,
    # 동시 처리 수(in_flight)와 준비 상태(ready)를 만드세요.
    # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): 시작할 때 caching.ResponseCache(CACHE_TTL_SECONDS, CACHE_MAX_ENTRIES,
    # REDIS_URL) 와 caching.Coalescer() 를 만드세요.
    # TODO 22 (lesson §15 'A/B 테스트'): 다른 모델을 쓰는 변형마다 클라이언트 하나 (answer_client(모델)).
    # TODO 25 (lesson §16 '카나리 모델 업데이트'): canary.Canary(CANARY_MODEL, CANARY_SHARE, ...설정, REDIS_URL) 과
    # 카나리 모델의 클라이언트를 만들고, 게이지 llm_canary_active 를 켜세요.
    yield
    # TODO 10 (lesson §8 '우아한 종료와 롤링 재시작'): 종료가 시작되면 /ready 가 503 을 내게 하세요.
    # 종료: 남은 판정 작업을 기다린 뒤(각 작업은 타임아웃과 시도 횟수로 끝이 있음) 클라이언트를 닫습니다.
    if app.state.judge_tasks:
        await asyncio.gather(*app.state.judge_tasks, return_exceptions=True)
    await judge_llm.aclose()
    await app.state.llm.aclose()
    # TODO 10 (lesson §8): Fallback 클라이언트와 한도 저장소(Redis 연결)도 닫으세요.
    # TODO 17 (lesson §11): 캐시의 Redis 연결도 닫으세요.
    # TODO 22, 25 (lesson §15, §16): 변형과 카나리의 클라이언트, 카나리의 Redis 연결도 닫으세요.
    TRACER_PROVIDER.force_flush()  # 모아 둔 스팬을 지금 내보냄 (BatchSpanProcessor). 프로세스가 끝날 때 SDK 가 shutdown
    import sentry_sdk

    sentry_sdk.flush(timeout=2)
    await asyncio.to_thread(observability.flush_langsmith)  # LangSmith 의 실행도 (켜져 있을 때만, 최대 5 초)


app = FastAPI(
    title="LLM 채팅 서비스",
    version="0.2.0",
    description="Gemini 를 감싼 채팅 API. `/chat` 은 `X-API-Key` 헤더가 필요합니다.",
    lifespan=lifespan,
    # FastAPI 의 내장 본문 크기 제한: 선언된 Content-Length 가 크면 본문을 읽기 전에, 헤더가 없는
    # (chunked) 본문은 읽는 동안 센 바이트가 넘는 순간 413 을 냅니다. JSON 파싱 전에 거절됩니다.
    max_body_size=MAX_BODY_BYTES,
    # FastAPI 의 내장 OpenTelemetry 계측: 요청마다 http.server.request.duration (경로, 메서드, 상태 코드) 을
    # telemetry.py 의 MeterProvider 로 기록합니다. 골든 시그널 중 지연 시간, 트래픽, 오류가 여기서 나옵니다.
    # 05단계: 같은 계측이 요청마다 서버 스팬도 만듭니다 (들어온 traceparent 를 이어받음). LLM 스팬은 그 자식.
    telemetry={**telemetry.FASTAPI_TELEMETRY, "tracing": True, "tracer_provider": TRACER_PROVIDER},
)

# 요청마다 JSON 로그 한 줄과 X-Request-ID. app.add_middleware() 로 넣으면 FastAPI 의 본문 크기 제한(413)과
# 500 처리의 안쪽에 들어가 그 응답에는 X-Request-ID 가 붙지 않으므로, FastAPI 가 만든 미들웨어 묶음 전체를 감쌉니다.
# 그래도 FastAPI 의 서버 스팬 안쪽이라 로그 줄에 trace_id 가 들어갑니다.
_build_middleware_stack = app.build_middleware_stack
app.build_middleware_stack = lambda: observability.RequestLogMiddleware(_build_middleware_stack())


@app.exception_handler(ApiError)
async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status_code, exc.code, exc.message, exc.headers)


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # UTF-8 이 아닌 본문: FastAPI 는 400 으로 답하지만 계약(OpenAPI 문서)의 형식 오류는 422 입니다.
        error = {"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error", "input": {},
                 "ctx": {"error": "본문이 UTF-8 JSON 이 아닙니다"}}
        return await request_validation_exception_handler(request, RequestValidationError([error]))
    code, message = HTTP_ERRORS.get(exc.status_code, ("http_error", "요청을 처리할 수 없습니다."))
    return error_response(exc.status_code, code, message, exc.headers)


@app.exception_handler(Exception)
async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # 클라이언트에게는 일반적인 메시지만. 트레이스는 Starlette 가 이 응답을 보낸 뒤
    # 예외를 다시 던져 uvicorn 이 서버 로그에 남깁니다.
    return error_response(500, "internal_error", "서버 내부 오류가 발생했습니다. 잠시 후 다시 시도하세요.")


async def get_llm(request: Request) -> ChatGoogleGenerativeAI:
    return request.app.state.llm


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="서비스 API 키 (SERVICE_API_KEY)")
# TODO 6 (lesson §5 'API 키별 Rate Limiting'): SERVICE_API_KEYS 의 키도 받으세요 (키 하나 = 클라이언트 하나).


async def require_api_key(api_key: Annotated[str | None, Depends(api_key_header)]) -> None:
    # TODO 6 (lesson §5): SERVICE_API_KEYS 의 키도 받으세요 (모든 키와 상수 시간 비교).
    expected = settings.service_api_key.get_secret_value()
    # 상수 시간 비교: 맞은 글자 수에 따라 응답 시간이 달라지지 않게 합니다.
    # TODO 6 (lesson §5): 모든 키와 비교하세요 (any 에 리스트를 넘겨 맞는 키를 찾아도 끝까지 비교).
    if api_key is None or not secrets.compare_digest(api_key.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "X-API-Key 헤더가 없거나 올바르지 않습니다.")
# TODO 6 (lesson §5 'API 키별 Rate Limiting'): 인증 뒤에 키별 한도를 재는 의존성 rate_limit 을 만드세요
# (429 rate_limited + Retry-After + RateLimit-Policy/RateLimit 헤더, 성공 응답에도 RateLimit).
# TODO 7 (lesson §6 '동시성 한도와 부하 차단'): MAX_IN_FLIGHT 를 넘는 /chat 은 바로 503 overloaded + Retry-After: 1.
# TODO 10 (lesson §8 '우아한 종료와 롤링 재시작'): SIGTERM 을 받으면 준비 상태를 내리세요 (uvicorn 의 처리기도 부름).


@app.get("/health", response_model=HealthResponse, summary="헬스 체크 (LLM 을 부르지 않음)")
async def health() -> HealthResponse:
    return HealthResponse(status="ok", model=settings.llm_model, prompt_version=settings.prompt_version)


# TODO 10 (lesson §8 '우아한 종료와 롤링 재시작'): GET /ready: 평소 200 {"status": "ready"}, 종료가 시작되면 503.
@app.get("/metrics", summary="Prometheus 메트릭 (키 없음, 비밀 값 없음)", include_in_schema=False)
async def metrics() -> Response:
    # Prometheus 는 키 없이 긁어 갑니다: 여기에는 질문, 사용자 id, 키 같은 값이 절대 들어가지 않습니다.
    body, content_type = telemetry.metrics_body()
    return Response(content=body, media_type=content_type)


@app.post(
    "/chat",
    response_model=ChatResponse,
    summary="LLM 에게 질문하기",
    # TODO 6, 7 (lesson §5, §6): 인증 뒤에 키별 한도(rate_limit)와 동시 처리 한도(in_flight_slot).
    dependencies=[Depends(require_api_key)],
    responses={
        401: {"model": ErrorResponse, "description": "X-API-Key 가 없거나 틀림"},
        # TODO 6 (lesson §5): 새 응답(422 content_blocked, 429 rate_limited)을 문서에 더하세요.
        413: {"model": ErrorResponse, "description": "요청 본문이 64 KiB 초과"},
        502: {"model": ErrorResponse, "description": "LLM 서버 오류 (5xx)"},
        503: {"model": ErrorResponse, "description": "LLM 호출 한도 초과 (429), Retry-After 헤더 포함"},
        504: {"model": ErrorResponse, "description": "LLM 응답 시간 초과"},
        500: {"model": ErrorResponse, "description": "예상하지 못한 서버 오류"},
    },
)
# TODO 4 (lesson §3): 응답 헤더 X-Fallback 을 쓰려면 response: Response 를 받으세요.
# TODO 19 (lesson §13 '배치 처리'): 아래 본문을 질문 하나의 함수(answer_one)로 옮기고, /chat 과 /chat/batch 의 항목이
# 모두 그 함수를 부르게 하세요 (본문을 복사하면 캐시, Fallback, 변형이 한쪽에만 생깁니다).
async def chat(req: ChatRequest, llm: Annotated[ChatGoogleGenerativeAI, Depends(get_llm)]) -> ChatResponse:
    # 입력 드리프트: 검증을 통과한 모든 질문의 길이 (LLM 이 답하기 전에, 실패한 요청도 입력은 입력).
    telemetry.set_drift(app.state.drift.observe(req.message))
    try:
        # 시스템 지시(프롬프트 버전의 내용)와 사용자 질문을 역할을 나눠 보냅니다.
        # TODO 4 (lesson §3 '서킷 브레이커와 Fallback'): answer_with_fallback 으로 (답, 답한 모델)을 받으세요.
        # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): answer_cached 로 (답, 답한 모델, 캐시 결과)를 받으세요.
        reply = await invoke_llm(llm, [SystemMessage(SYSTEM_PROMPT), HumanMessage(req.message)], settings.llm_model)
    except ModelRateLimitError as exc:  # 429 -> GoogleRateLimitError
        raise ApiError(
            503,
            "upstream_rate_limited",
            "LLM 호출 한도를 넘었습니다. Retry-After 초 뒤에 다시 시도하세요.",
            headers={"Retry-After": str(retry_after_seconds(exc))},
        ) from None
    except ServerError:  # 5xx -> GoogleAPIError (google.genai.errors.ServerError 의 하위 클래스)
        raise ApiError(502, "upstream_error", "LLM 서버에서 오류가 발생했습니다. 잠시 후 다시 시도하세요.") from None
    except UPSTREAM_TIMEOUTS:  # 시간 초과 -> httpx2.ReadTimeout 등
        raise ApiError(
            504, "upstream_timeout", f"LLM 이 {settings.llm_timeout_seconds:g}초 안에 응답하지 않았습니다."
        ) from None
    # TODO 5 (lesson §4 '업스트림의 이상한 답'): 새 실패를 문서에 적은 JSON 으로: 데드라인 504 upstream_timeout,
    # SAFETY 422 content_blocked, 빈 답/깨진 본문 502 upstream_malformed, 업스트림 400 502 upstream_bad_request,
    # 열린 회로(Fallback 없음) 503 upstream_unavailable. 500 은 절대 나가면 안 됩니다.
    usage = reply.usage_metadata or {}
    # TODO 9 (lesson §7): 응답 id 를 공유 저장소(resilience.SharedResponses)에.
    # TODO 4 (lesson §3): Fallback 이 답했으면 표시하세요: 헤더 X-Fallback: <모델>, 로그 줄의 fallback.
    response_id = app.state.responses.issue()
    # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): 응답 헤더 X-Cache: hit | miss | coalesced.
    # TODO 20 (lesson §14 '토큰 예산'): 잘린 답(finish_reason MAX_TOKENS)을 표시하세요: 응답의 truncated, 로그 줄의
    # truncated, 메트릭 telemetry.record_truncated(답한 모델).
    telemetry.record_answer(settings.llm_model, refused=quality.is_refusal(reply.text))
    # TODO 17 (lesson §11): 캐시의 답(hit, coalesced)은 판정하지 마세요.
    if random.random() < settings.judge_sample_rate:  # 0 이면 판정하지 않음, 1 이면 모두
        schedule_judge(req.message, reply.text)
    # 질문과 답은 로그에 쓰지 않고, 설정이 있을 때만 암호화해 저장합니다 (lesson §4).
    prompt_store.append(settings.log_dir, PROMPT_FERNET, structlog.contextvars.get_contextvars().get("request_id", ""),
                        req.message, reply.text)
    return ChatResponse(
        response=reply.text,
        # TODO 4 (lesson §3): model 은 실제로 답한 모델, fallback 은 Fallback 이 답했는지.
        model=settings.llm_model,
        # TODO 20 (lesson §14): truncated. TODO 22 (lesson §15): 답한 변형과 그 변형의 프롬프트 버전.
        prompt_version=settings.prompt_version,
        usage=Usage(
            input_tokens=usage.get("input_tokens", 0),
            output_tokens=usage.get("output_tokens", 0),
            total_tokens=usage.get("total_tokens", 0),
        ),
        response_id=response_id,
    )


@app.post(
    "/feedback",
    response_model=FeedbackResponse,
    summary="답 하나에 피드백 (좋아요/싫어요, 선택 점수)",
    # TODO 6 (lesson §5): /feedback 에도 키별 한도.
    dependencies=[Depends(require_api_key)],
    responses={
        401: {"model": ErrorResponse, "description": "X-API-Key 가 없거나 틀림"},
        404: {"model": ErrorResponse, "description": "이 서비스가 낸 response_id 가 아님 (unknown_response_id)"},
        409: {"model": ErrorResponse, "description": "이 답에는 이미 피드백이 있음 (feedback_exists)"},
    },
)
async def feedback(req: FeedbackRequest) -> FeedbackResponse:
    # 검증(422)은 FastAPI 가 FeedbackRequest 로 먼저 합니다: 잘못된 피드백은 어떤 카운터도 바꾸지 않습니다.
    # TODO 9 (lesson §7 '로드 밸런서 뒤의 복제본 두 개'): 다른 복제본이 낸 id 도 받도록 공유 저장소에서.
    outcome = app.state.responses.claim(req.response_id)
    if outcome == quality.IssuedResponses.UNKNOWN:
        raise ApiError(404, "unknown_response_id",
                       "이 서비스가 낸 response_id 가 아닙니다 (최근 10 000 개의 답만 기억합니다).")
    if outcome == quality.IssuedResponses.EXISTS:
        raise ApiError(409, "feedback_exists", "이 답에는 이미 피드백이 있습니다.")
    telemetry.record_feedback(req.rating, req.score)  # comment 는 메트릭에 넣지 않습니다
    # TODO 22 (lesson §15 'A/B 테스트'): 이 답을 낸 변형의 피드백으로도 세세요 (telemetry.record_experiment_feedback):
    # 응답 id 를 낼 때 변형을 함께 적고(shared_responses.issue(variant)), 받을 때 claim_variant 로 읽음.
    return FeedbackResponse(response_id=req.response_id, rating=req.rating, recorded=True)
# TODO 18 (lesson §12 '스트리밍'): POST /chat/stream 을 만드세요: /chat 과 같은 의존성(키, 한도, 동시 처리 한도)과
# 본문, response_class=EventSourceResponse, ServerSentEvent 를 yield 하는 생성기. llm.astream 의 조각을 오는 대로
# event: delta {"text": ...} 로 (모아 두지 말 것), 끝에 event: done {response_id, model, prompt_version, usage}.
# 첫 조각은 REQUEST_DEADLINE_SECONDS 안에. 실패하면(끊긴 스트림 포함) event: error {"error": {code, message}} 하나.
# 클라이언트가 떠나면 업스트림 스트림을 닫으세요 (contextlib.aclosing). 메트릭 llm_time_to_first_token_seconds,
# 토큰과 비용, 로그 줄의 ttft_ms.
# TODO 19 (lesson §13 '배치 처리'): POST /chat/batch 를 만드세요: 인증, 한도는 질문 수만큼
# (limiter.hit(api_key, cost=len(messages)): 남은 한도보다 많으면 전체 429), 동시 처리 한도는 배치에 한 자리.
# 질문마다 /chat 과 같은 길(answer_routed)을 RunnableLambda(...).abatch(messages, config={"max_concurrency":
# BATCH_CONCURRENCY}, return_exceptions=True) 로 (asyncio.gather 는 상한이 없음). 결과는 같은 순서, 실패한 질문은
# 그 자리에 {"ok": false, "error": {"code", "message"}} (배치 전체를 실패시키지 말 것). 메트릭
# telemetry.record_batch(질문 수), 로그 줄의 batch_size, batch_failed.
# TODO 25 (lesson §16 '카나리 모델 업데이트'): GET /canary (서비스 키 필요): await canary.state().
