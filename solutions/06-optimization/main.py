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
# BEGIN SOLUTION

import json

import pybreaker
from google.genai.errors import UnknownApiResponseError
from langchain_core.exceptions import ModelInvalidRequestError
from limits import parse as parse_rate_limit

import resilience
# STARTER
# # TODO 1 (lesson §2 '데드라인 있는 재시도'): 06단계의 모듈을 가져오세요: pybreaker (§3), limits (§5), resilience.py (§5, §7).
# END SOLUTION
# BEGIN SOLUTION
import contextlib
from collections.abc import AsyncIterable

from fastapi.sse import EventSourceResponse, ServerSentEvent
from langchain_core.messages import AIMessage
from opentelemetry import trace

import caching
# STARTER
# # TODO 13 (lesson §11 '응답 캐시와 요청 합치기'): caching.py (§11) 와 FastAPI 의 SSE (fastapi.sse 의
# # EventSourceResponse, ServerSentEvent: §12 '스트리밍') 를 가져오세요.
# END SOLUTION
# BEGIN SOLUTION
from dataclasses import dataclass

from langchain_core.runnables import RunnableLambda
from pydantic import AfterValidator, ValidationInfo, model_validator
from pydantic_settings import NoDecode

import canary
import experiments

MIN_ATTEMPT_SECONDS = 0.3  # 남은 시간이 이보다 짧으면 새 시도를 하지 않음 (그 시간에 끝날 답이 거의 없음). 설정 검사도 씀
# STARTER
# # TODO 19 (lesson §13 '배치 처리'): LangChain 의 RunnableLambda (abatch 가 동시 처리 상한을 지킴)를 가져오세요.
# # TODO 22, 25 (lesson §15 'A/B 테스트', §16 '카나리 모델 업데이트'): experiments.py 와 canary.py 를 가져오세요.
# END SOLUTION

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
    # BEGIN SOLUTION
    # 06단계 (lesson §2~§6). 기본값은 README 의 설정 표와 같습니다.
    # 요청 하나의 전체 시간 예산 (초): 주 모델의 모든 시도 + 대기 + Fallback 까지.
    request_deadline_seconds: float = Field(default=2.5, gt=0)
    fallback_model: str = "gemini-3.5-flash-lite"  # 빈 문자열이면 Fallback 없음
    fallback_reserve_seconds: float = Field(default=0.8, ge=0)  # 데드라인 중 Fallback 몫으로 남겨 둘 시간
    circuit_fail_max: int = Field(default=5, ge=1)  # 연속 실패가 이만큼이면 회로를 엶
    circuit_reset_seconds: float = Field(default=10, gt=0)  # 열린 회로가 반쯤 열리기(half-open)까지
    rate_limit: str = "60/minute"  # API 키마다 (limits 문법: "12/minute", "100/hour", "5/second")
    redis_url: str | None = None  # 비우면 한도와 응답 id 를 프로세스 메모리에 (복제본 하나일 때만 맞음)
    service_api_keys: SecretStr | None = None  # SERVICE_API_KEY 말고도 받을 키들 (쉼표로 구분, 키 하나 = 클라이언트 하나)
    max_in_flight: int = Field(default=32, ge=1)  # 복제본 하나가 동시에 처리할 /chat 수. 넘으면 바로 503 overloaded

    @field_validator("rate_limit")
    @classmethod
    def valid_rate_limit(cls, value: str) -> str:
        parse_rate_limit(value)  # 잘못된 문자열이면 ValueError: 서비스가 시작하지 않음
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def empty_is_none(cls, value):
        return value or None

    @field_validator("fallback_reserve_seconds")
    @classmethod
    def primary_gets_an_attempt(cls, reserve: float, info: ValidationInfo) -> float:
        # 주 모델은 데드라인에서 Fallback 몫을 뺀 시간까지만 시도를 시작합니다. 그 시간이 시도 하나의 최소 시간보다 짧으면
        # 주 모델은 한 번도 불리지 않고 모든 요청이 조용히 Fallback 으로 갑니다: 그런 설정이면 시작하지 않습니다.
        # (모델 검사기가 아니라 필드 검사기: 오류에 설정 전체(키 포함)가 아니라 이 값만 찍힙니다.)
        deadline, fallback = info.data.get("request_deadline_seconds"), info.data.get("fallback_model")
        if deadline is not None and fallback and deadline - reserve < MIN_ATTEMPT_SECONDS:
            raise ValueError(
                f"REQUEST_DEADLINE_SECONDS({deadline:g}) - FALLBACK_RESERVE_SECONDS({reserve:g}) = {deadline - reserve:g}초: "
                f"주 모델의 시도 하나에 필요한 {MIN_ATTEMPT_SECONDS:g}초보다 짧아 주 모델을 부르지 못합니다. "
                "데드라인을 늘리거나 FALLBACK_RESERVE_SECONDS 를 줄이세요")
        return reserve
    # STARTER
    # # TODO 1 (lesson §2 '데드라인 있는 재시도'): 06단계 설정을 더하세요 (README 의 설정 표):
    # # request_deadline_seconds (2.5), fallback_model ("gemini-3.5-flash-lite"), fallback_reserve_seconds (0.8),
    # # circuit_fail_max (5), circuit_reset_seconds (10), rate_limit ("60/minute"), redis_url (None),
    # # service_api_keys (SecretStr | None), max_in_flight (32).
    # END SOLUTION
    # BEGIN SOLUTION
    # 06단계 2부 (lesson §11): 응답 캐시의 수명(초). 0 이면 캐시도 요청 합치기도 끔. REDIS_URL 이 있으면 Redis 에 (복제본이
    # 함께 씀), 없으면 이 프로세스의 메모리에 최대 cache_max_entries 개.
    cache_ttl_seconds: float = Field(default=300, ge=0)
    cache_max_entries: int = Field(default=10000, ge=1)
    # STARTER
    # # TODO 13 (lesson §11 '응답 캐시와 요청 합치기'): 설정 cache_ttl_seconds (300, 0 이면 끔)와 cache_max_entries (10000).
    # END SOLUTION
    # BEGIN SOLUTION
    # 06단계 2부 (lesson §13~§16). 기본값은 README 의 설정 표와 같습니다.
    batch_max_items: int = Field(default=16, ge=1)  # POST /chat/batch 하나의 질문 수 상한 (넘으면 422)
    batch_concurrency: int = Field(default=4, ge=1)  # 배치 하나에서 동시에 업스트림에 가는 질문 수
    # 토큰 예산 (§14): 답의 출력 토큰 상한 (비우면 상한 없음), 사고(thinking) 토큰 상한 (0 = 사고 없음, 비우면 모델 기본).
    max_output_tokens: int | None = Field(default=1024, ge=1)
    thinking_budget: int | None = Field(default=None, ge=0)
    # A/B 테스트 (§15): 실험 이름 (비우면 끔)과 변형들 (JSON: {"이름": {"prompt_version", "model", "weight"}}).
    ab_experiment: str = Field(default="", pattern=r"^$|" + experiments.EXPERIMENT_PATTERN)
    ab_variants: Annotated[dict[str, experiments.Variant], NoDecode] = Field(default_factory=dict)
    # 카나리 (§16): 새 모델 (비우면 끔), 보낼 몫, 판정 전에 필요한 카나리 결과 수, 창(초), 롤백 규칙의 두 문턱.
    canary_model: str = ""
    canary_share: float = Field(default=0.05, gt=0, lt=1)
    canary_min_requests: int = Field(default=20, ge=1)
    canary_window_seconds: float = Field(default=300, gt=0)
    canary_max_error_increase: float = Field(default=0.05, ge=0)
    canary_max_score_drop: float = Field(default=0.5, ge=0)

    @field_validator("max_output_tokens", "thinking_budget", mode="before")
    @classmethod
    def empty_is_no_cap(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("ab_variants", mode="before")
    @classmethod
    def variants_json(cls, value):
        if isinstance(value, (str, bytes)):  # 환경 변수의 JSON (비우면 변형 없음)
            return json.loads(value) if value.strip() else {}
        return value

    @model_validator(mode="after")
    def one_change_at_a_time(self):
        if self.ab_experiment:
            experiments.validate_variants(self.ab_variants)  # 변형 2개 이상, 몫의 합 1 (아니면 시작하지 않음)
            if self.canary_model:
                raise ValueError("AB_EXPERIMENT 와 CANARY_MODEL 을 함께 켤 수 없습니다: 한 번에 하나만 바꾸세요 "
                                 "(둘이 겹치면 어느 변화가 결과를 바꿨는지 알 수 없습니다)")
        return self
    # STARTER
    # # TODO 19 (lesson §13 '배치 처리'): 설정 batch_max_items (16), batch_concurrency (4).
    # # TODO 20 (lesson §14 '토큰 예산'): max_output_tokens (1024, 비우면 None = 상한 없음), thinking_budget (None).
    # # TODO 22 (lesson §15 'A/B 테스트'): ab_experiment ("" = 끔), ab_variants (JSON, experiments.Variant).
    # # TODO 25 (lesson §16 '카나리 모델 업데이트'): canary_model (""), canary_share (0.05), canary_min_requests (20),
    # # canary_window_seconds (300), canary_max_error_increase (0.05), canary_max_score_drop (0.5).
    # # A/B 와 카나리를 함께 켜면 서비스가 시작하지 않게 하세요 (한 번에 하나만 바꿈).
    # END SOLUTION

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
# BEGIN SOLUTION
# A/B 실험의 변형마다 시스템 프롬프트 (lesson §15): 파일이 없는 변형이 있으면 서비스가 시작하지 않습니다.
VARIANT_PROMPTS = experiments.check_prompts(settings.ab_variants, load_prompt) if settings.ab_experiment else {}
# STARTER
# # TODO 22 (lesson §15 'A/B 테스트'): 실험이 켜져 있으면 변형마다 프롬프트를 시작할 때 읽으세요
# # (experiments.check_prompts(settings.ab_variants, load_prompt)).
# END SOLUTION

# 관측 설정 (앱을 만들기 전에): JSON 로그, LangSmith 숨기기, Sentry, 추적. 키는 Sentry 이벤트에서 가릴 값으로만 넘깁니다.
observability.configure_logging(settings.log_dir, settings.log_level)
observability.hide_langsmith_payloads()
observability.init_sentry(
    settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None,
    secrets=[settings.google_api_key.get_secret_value(), settings.service_api_key.get_secret_value(),
    # BEGIN SOLUTION
             *(settings.prompt_encryption_keys.get_secret_value().split(",") if settings.prompt_encryption_keys else []),
             *(k.strip() for k in (settings.service_api_keys.get_secret_value().split(",")
                                   if settings.service_api_keys else []))],
    # STARTER
    # # TODO 6 (lesson §5): SERVICE_API_KEYS 의 키들도 Sentry 이벤트에서 가릴 값으로.
    #          *(settings.prompt_encryption_keys.get_secret_value().split(",") if settings.prompt_encryption_keys else [])],
    # END SOLUTION
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
    # BEGIN SOLUTION
    fallback: bool = Field(default=False, description="Fallback 모델(FALLBACK_MODEL)이 답했으면 true (model 이 그 모델)")
    # STARTER
    # # TODO 4 (lesson §3 '서킷 브레이커와 Fallback'): Fallback 이 답한 응답을 표시할 필드 fallback: bool (기본 False).
    # END SOLUTION
    # BEGIN SOLUTION
    cached: bool = Field(default=False, description="캐시의 답(X-Cache: hit)이나 같은 질문과 합친 답(coalesced)이면 true")
    # STARTER
    # # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): 캐시에서 온 답을 표시할 필드 cached: bool (기본 False).
    # END SOLUTION
    # BEGIN SOLUTION
    truncated: bool = Field(default=False, description="답이 MAX_OUTPUT_TOKENS 에서 잘렸으면 true (finish_reason MAX_TOKENS)")
    variant: str | None = Field(default=None, description="A/B 실험이 켜져 있으면 이 답을 낸 변형 (헤더 X-Variant 와 같음)")
    # STARTER
    # # TODO 20 (lesson §14 '토큰 예산'): 잘린 답을 표시할 필드 truncated: bool (기본 False).
    # # TODO 22 (lesson §15 'A/B 테스트'): 답한 변형 variant: str | None (기본 None).
    # END SOLUTION


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
# BEGIN SOLUTION


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("메시지가 비어 있습니다 (공백만 있음)")
    return value


# 배치의 질문 하나: ChatRequest.message 와 같은 규칙 (1~MAX_MESSAGE_CHARS 자, 공백만은 안 됨)
BatchMessage = Annotated[str, Field(min_length=1, max_length=settings.max_message_chars), AfterValidator(not_blank)]


class BatchRequest(BaseModel):
    """POST /chat/batch 요청 본문 (lesson §13): 질문 1~BATCH_MAX_ITEMS 개. 하나라도 틀리면 422 (아무것도 묻지 않음)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"messages": ["MLOps 가 무엇인가요?", "요금제가 어떻게 돼요?"]}]},
    )

    messages: list[BatchMessage] = Field(min_length=1, max_length=settings.batch_max_items,
                                         description=f"질문들 (1~{settings.batch_max_items}개, 결과는 같은 순서)")
    user_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:@-]{1,64}$", description="선택: 사용자 id")


class BatchAnswer(ChatResponse):
    """배치의 결과 하나: 성공 (ChatResponse 와 같은 필드)."""

    ok: Literal[True] = True


class BatchFailure(BaseModel):
    """배치의 결과 하나: 실패 (/chat 이라면 냈을 오류의 code 와 message). 다른 질문의 결과는 그대로."""

    ok: Literal[False] = False
    error: ErrorDetail


class BatchResponse(BaseModel):
    results: list[BatchAnswer | BatchFailure] = Field(description="messages 와 같은 순서의 결과")
# STARTER
# # TODO 19 (lesson §13 '배치 처리'): 본문 BatchRequest (messages: 1~BATCH_MAX_ITEMS 개, 각각 ChatRequest.message 와
# # 같은 규칙, 선택 user_id)와 응답 BatchResponse (results: 성공 {"ok": true, ...ChatResponse} 또는 실패
# # {"ok": false, "error": {"code", "message"}}) 를 만드세요.
# END SOLUTION


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
# BEGIN SOLUTION


def json_error_doc(description: str, *, validation: bool = False) -> dict:
    """OpenAPI 에 적는 오류 응답 하나 (lesson §12, §13): 본문은 application/json 의 ErrorResponse. SSE 경로
    (response_class=EventSourceResponse)의 오류도 스트림이 시작하기 전의 JSON 이라 content 를 직접 적습니다
    ("model" 로 적으면 그 경로의 text/event-stream 으로 문서화됨). validation=True: FastAPI 의 검증 오류
    {"detail": [...]} 도 같은 상태 코드(422)로 나감."""
    schema: dict = {"$ref": "#/components/schemas/ErrorResponse"}
    if validation:
        schema = {"anyOf": [schema, {"$ref": "#/components/schemas/HTTPValidationError"}]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}
# STARTER
# # TODO 18, 19 (lesson §12 '스트리밍', §13 '배치 처리'): 새 경로의 오류 응답을 OpenAPI 에 application/json 의
# # ErrorResponse 로 적는 json_error_doc(설명, validation=False) 를 만드세요 (SSE 경로도 오류는 스트림 전의 JSON).
# END SOLUTION


# Starlette/FastAPI 가 직접 내는 HTTP 오류 (404, 405, 413 ...) 도 같은 모양으로 바꿉니다.
HTTP_ERRORS = {
    404: ("not_found", "요청한 경로가 없습니다."),
    405: ("method_not_allowed", "허용되지 않는 HTTP 메서드입니다."),
    413: ("payload_too_large", f"요청 본문이 너무 큽니다 (최대 {MAX_BODY_BYTES // 1024} KiB)."),
}

# google-genai 3.x 는 기본으로 httpx2 를 씁니다 (GOOGLE_GENAI_HTTP_CLIENT=httpx 이면 httpx).
# 타임아웃은 SDK 가 감싸지 않은 httpx2.ReadTimeout 등으로 올라오므로 둘 다 잡습니다.
UPSTREAM_TIMEOUTS = (httpx2.TimeoutException, httpx.TimeoutException)
# BEGIN SOLUTION

# 06단계 (lesson §4): 업스트림이 200 으로 답했지만 쓸 수 없는 답.


class ContentBlocked(Exception):
    """finish_reason SAFETY (안전 필터가 답을 막음): 다시 물어도 같으므로 재시도도 Fallback 도 하지 않음 -> 422."""


class UpstreamMalformed(Exception):
    """후보가 없거나(candidates: []) 글이 빈 답: 깨진 본문처럼 재시도 -> 끝내 실패하면 502 upstream_malformed."""


class CircuitOpen(Exception):
    """회로가 열려 주 모델을 부르지 않음 (lesson §3)."""


# 깨진 200 본문: ainvoke 는 json.JSONDecodeError, astream 은 UnknownApiResponseError (시뮬레이터 README §1)
MALFORMED = (UpstreamMalformed, json.JSONDecodeError, UnknownApiResponseError)


def check_reply(reply) -> None:
    """ainvoke 가 예외 없이 돌려준 답도 쓸 수 있는지 봅니다."""
    finish = str((reply.response_metadata or {}).get("finish_reason") or "").upper()
    if "SAFETY" in finish or finish in ("PROHIBITED_CONTENT", "BLOCKLIST", "SPII"):
        raise ContentBlocked(finish)
    if not reply.text.strip():
        raise UpstreamMalformed(finish or "empty")
# STARTER
# # TODO 5 (lesson §4 '업스트림의 이상한 답'): SAFETY 로 막힌 답(finish_reason), 후보가 없거나 빈 답, 깨진 본문
# # (json.JSONDecodeError)을 구분할 예외와 check_reply(reply) 를 만드세요. 500 이 나가면 안 됩니다.
# END SOLUTION


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
    # BEGIN SOLUTION
    if isinstance(exc, ContentBlocked):
        return "content_blocked"
    if isinstance(exc, MALFORMED):
        return "upstream_malformed"
    if isinstance(exc, CircuitOpen):
        return "upstream_unavailable"
    if isinstance(exc, ModelInvalidRequestError):
        return "upstream_bad_request"
    if isinstance(exc, (TimeoutError, asyncio.CancelledError)):  # 데드라인(asyncio.timeout)으로 끊긴 시도
        return "upstream_timeout"
    # STARTER
    # # TODO 5 (lesson §4 '업스트림의 이상한 답'): 새 실패의 종류 content_blocked, upstream_malformed,
    # # upstream_bad_request, upstream_unavailable, 그리고 데드라인(TimeoutError)의 upstream_timeout.
    # END SOLUTION
    if isinstance(exc, ModelRateLimitError):
        return "upstream_rate_limited"
    if isinstance(exc, ServerError):
        return "upstream_error"
    if isinstance(exc, UPSTREAM_TIMEOUTS):
        return "upstream_timeout"
    return "internal_error"


# BEGIN SOLUTION
def retryable(exc: BaseException) -> bool:
    """다시 시도할 실패: 429, 5xx, 시간 초과(데드라인 포함), 연결 실패, 깨진 본문이나 빈 답 (다음엔 멀쩡할 수 있음).
    절대 다시 시도하지 않는 실패: 400 계열(틀린 요청, 틀린 키)과 SAFETY 차단: 다시 보내도 같은 답입니다."""
    if isinstance(exc, (ContentBlocked, CircuitOpen, ModelInvalidRequestError)):
        return False
    return isinstance(exc, (ModelRateLimitError, ServerError, *UPSTREAM_TIMEOUTS, httpx2.ConnectError, httpx.ConnectError,
                            *MALFORMED, TimeoutError))
# STARTER
# # TODO 2 (lesson §2 '데드라인 있는 재시도'): 재시도할 실패와 하지 않을 실패를 나누세요: 깨진 본문/빈 답과
# # 데드라인의 TimeoutError 는 재시도, 400 계열(ModelInvalidRequestError)과 SAFETY 차단은 절대 재시도하지 않음.
# def retryable(exc: BaseException) -> bool:
#     """다시 시도할 실패: 429, 5xx, 시간 초과, 연결 실패 (google-genai 의 기본 재시도와 같은 기준).
#     요청이 틀린 4xx 나 깨진 응답은 다시 보내도 같으므로 바로 실패합니다."""
#     return isinstance(exc, (ModelRateLimitError, ServerError, *UPSTREAM_TIMEOUTS, httpx2.ConnectError, httpx.ConnectError))
# END SOLUTION


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
        # BEGIN SOLUTION
            check_reply(reply)  # SAFETY 차단, 빈 답도 이 시도의 실패 (스팬에 error.type)
        except (Exception, asyncio.CancelledError) as exc:  # CancelledError: 데드라인(asyncio.timeout)이 끊은 시도
        # STARTER
        # # TODO 5 (lesson §4 '업스트림의 이상한 답'): 답을 check_reply 로 보고, 데드라인에 끊긴 시도
        # # (asyncio.CancelledError)도 스팬에 실패로 남기세요.
        # except Exception as exc:
        # END SOLUTION
            span.set_attribute("error.type", error_type(exc))
            span.set_status(StatusCode.ERROR, type(exc).__name__)  # 예외 메시지는 넣지 않음
            raise
        usage = reply.usage_metadata or {}
        span.set_attributes({"gen_ai.usage.input_tokens": int(usage.get("input_tokens", 0)),
                             "gen_ai.usage.output_tokens": int(usage.get("output_tokens", 0))})
        return reply


# BEGIN SOLUTION
async def invoke_llm(llm, messages: list, model: str, until: float | None = None, breaker=None, capture: bool = True,
                     stats: dict | None = None, retry_until: float | None = None):
# STARTER
# # TODO 3 (lesson §2 '데드라인 있는 재시도'): invoke_llm 이 시간 예산의 끝(until, loop.time() 기준), 서킷 브레이커,
# # Sentry 로 보낼지(capture), 시도 횟수를 돌려줄 dict(stats)를 받게 하세요.
# async def invoke_llm(llm, messages: list, model: str):
# END SOLUTION
    """LLM 호출 한 번: 서비스가 시도를 직접 돌립니다 (클라이언트의 재시도는 max_retries=1 로 끔). 총 시도는
    LLM_MAX_ATTEMPTS 번, 시도마다 스팬 하나. 메트릭은 04단계와 같이 호출(모든 시도) 한 번에 하나."""
    started = time.perf_counter()
    attempts = 0
    observability.note(model=model, prompt_version=settings.prompt_version)
    try:
        # google-genai 의 기본 재시도와 같은 대기: 1초에서 두 배씩, 최대 60초, 0~1초 흔들기(jitter).
        # BEGIN SOLUTION
        # 06단계 (lesson §2): 위의 1초~60초 대기는 데드라인 2.5 초 안에 들어가지 않습니다. 대기는 0.1 초에서 두 배씩
        # 최대 0.5 초 (+ 0~0.1 초 지터), 429 의 RetryInfo 는 남은 시간에 들어갈 때만 따르고, 아니면 멈춥니다.
        loop = asyncio.get_running_loop()
        end = loop.time() + settings.request_deadline_seconds if until is None else until
        last_start = end if retry_until is None else min(retry_until, end)  # 새 시도를 시작할 수 있는 마지막 시각
        backoff = wait_exponential_jitter(initial=0.1, max=0.5, exp_base=2, jitter=0.1)

        def wait(state) -> float:
            exc = state.outcome.exception()
            hinted = retry_after_seconds(exc, default=0) if isinstance(exc, ModelRateLimitError) else 0
            return max(backoff(state), hinted)

        def stop(state) -> bool:  # 시도 횟수 상한, 또는 대기 뒤 남을 시간이 시도 하나에 모자라면
            return (stop_after_attempt(settings.llm_max_attempts)(state)
                    or last_start - loop.time() - state.upcoming_sleep < MIN_ATTEMPT_SECONDS)

        def count() -> None:  # 업스트림에 실제로 보내는 시도만 셉니다 (열린 회로에 막힌 시도는 아님)
            nonlocal attempts
            attempts += 1
            if stats is not None:
                stats["attempts"] = attempts

        if last_start - loop.time() < MIN_ATTEMPT_SECONDS:
            raise TimeoutError("데드라인까지 시도 하나를 할 시간이 없습니다")
        async for attempt in AsyncRetrying(stop=stop, retry=retry_if_exception(retryable), wait=wait, reraise=True):
            with attempt:
                async with asyncio.timeout(max(0.0, end - loop.time())):  # 시도 하나 = 남은 예산까지만
                    if breaker is None:
                        count()
                        reply = await attempt_llm(llm, messages, model)
                    else:
                        reply = await guarded_attempt(breaker, llm, messages, model, count)
        # STARTER
        # # TODO 3 (lesson §2 '데드라인 있는 재시도'): 데드라인 안에서만 재시도하세요: 시도마다 asyncio.timeout(남은 시간),
        # # 대기는 작게(0.1 초에서 최대 0.5 초, 지터), 대기 뒤 남은 시간이 모자라면 멈춤, 429 의 RetryInfo 는 들어갈 때만.
        # async for attempt in AsyncRetrying(stop=stop_after_attempt(settings.llm_max_attempts),
        #                                    retry=retry_if_exception(retryable),
        #                                    wait=wait_exponential_jitter(initial=1, max=60, exp_base=2, jitter=1),
        #                                    reraise=True):
        #     with attempt:
        #         attempts += 1
        #         reply = await attempt_llm(llm, messages, model)
        # END SOLUTION
    except Exception as exc:
        kind = error_type(exc)
        observability.note(attempts=attempts)
        telemetry.record_operation(model, time.perf_counter() - started, error_type=kind)
        # BEGIN SOLUTION
        if capture and kind not in ("internal_error", "content_blocked") and observability.in_request():
        # STARTER
        # # TODO 3 (lesson §3): Fallback 이 있으면 Sentry 이벤트는 요청의 마지막 실패 하나만 (capture=False 면 보내지 않음).
        # if kind != "internal_error" and observability.in_request():
        # END SOLUTION
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
# BEGIN SOLUTION


def counts_against_circuit(exc: BaseException) -> bool:
    """회로를 여는 실패 = 업스트림이 아픈 신호 (429, 5xx, 시간 초과, 깨진 답). 400 과 SAFETY 는 세지 않습니다."""
    return retryable(exc) or isinstance(exc, asyncio.CancelledError)


# 프로세스마다 하나 (복제본마다 따로 셈): 연속 실패 CIRCUIT_FAIL_MAX 번이면 열리고, CIRCUIT_RESET_SECONDS 뒤 반쯤 열림.
PRIMARY_CIRCUIT = pybreaker.CircuitBreaker(fail_max=settings.circuit_fail_max,
                                           reset_timeout=settings.circuit_reset_seconds,
                                           exclude=[lambda exc: not counts_against_circuit(exc)], name="primary")


def circuit(model: str) -> pybreaker.CircuitBreaker:
    """모델마다 회로 하나: LLM_MODEL 은 PRIMARY_CIRCUIT, A/B 변형이나 카나리의 다른 모델은 따로 (카나리의 실패가
    지금 모델의 회로를 열지 않게)."""
    if model == settings.llm_model:
        return PRIMARY_CIRCUIT
    if model not in OTHER_CIRCUITS:
        OTHER_CIRCUITS[model] = pybreaker.CircuitBreaker(
            fail_max=settings.circuit_fail_max, reset_timeout=settings.circuit_reset_seconds,
            exclude=[lambda exc: not counts_against_circuit(exc)], name=model)
    return OTHER_CIRCUITS[model]


OTHER_CIRCUITS: dict[str, pybreaker.CircuitBreaker] = {}


async def guarded_attempt(breaker: pybreaker.CircuitBreaker, llm, messages: list, model: str, count):
    """주 모델 시도 하나를 회로 차단기로 감쌉니다 (pybreaker 의 동기 calling() 은 await 를 감쌀 수 있음)."""
    entered = False
    try:
        with breaker.calling():
            entered = True
            count()
            return await attempt_llm(llm, messages, model)
    except pybreaker.CircuitBreakerError as exc:
        if not entered:  # 열린 회로: 업스트림을 부르지 않음
            raise CircuitOpen() from None
        raise exc.__context__ from None  # 이 실패로 회로가 열림: 원래 실패를 그대로 올림


def fallback_reason(exc: BaseException) -> str | None:
    """Fallback 으로 넘어갈 이유 (error, timeout, circuit_open), 넘어가지 않으면 None (400, SAFETY: 다른 모델도 같음)."""
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, (TimeoutError, asyncio.CancelledError, *UPSTREAM_TIMEOUTS)):
        return "timeout"
    return "error" if retryable(exc) else None


async def answer_with_fallback(llm, messages: list, model: str | None = None):
    """주 모델(회로 차단기) -> 실패하면 Fallback 모델, 둘 다 요청의 데드라인 안에서. 돌려주는 값: (답, 답한 모델).
    model = 주 모델의 이름 (llm 의 모델: 기본 LLM_MODEL, A/B 변형이나 카나리면 그 모델).

    주 모델은 `데드라인 - FALLBACK_RESERVE_SECONDS` 까지만 새 시도를 시작합니다. 그때까지 답이 없으면 진행 중인 시도를
    끊지 않고 Fallback 을 함께 부르고(hedge), 데드라인 안에 먼저 온 답을 씁니다 (다른 쪽은 취소). 주 모델이 그보다 먼저
    실패하면(재시도 뒤, 열린 회로) 바로 Fallback. 요청의 마지막 실패 하나만 Sentry 로 보냅니다."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_deadline_seconds
    fallback = settings.fallback_model
    model = model or settings.llm_model
    primary_end = deadline - settings.fallback_reserve_seconds if fallback else deadline
    primary, second = {"attempts": 0}, {"attempts": 0}
    backup = None
    first = asyncio.create_task(invoke_llm(llm, messages, model, until=deadline, breaker=circuit(model),
                                           capture=False, stats=primary, retry_until=primary_end))
    try:
        await asyncio.wait({first}, timeout=max(0.0, primary_end - loop.time()) if fallback else None)
        if first.done() and first.exception() is None:
            return first.result(), model
        failure = first.exception() if first.done() else TimeoutError("주 모델이 Fallback 몫의 시간까지 답하지 않음")
        reason = fallback_reason(failure) if fallback else None
        if reason is None:
            capture_failure(failure)
            raise failure
        telemetry.record_fallback(model, reason)
        observability.note(fallback_reason=reason)
        backup = asyncio.create_task(invoke_llm(app.state.fallback_llm, messages, fallback, until=deadline,
                                                capture=False, stats=second))
        pending = {backup} if first.done() else {first, backup}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    return task.result(), (model if task is first else fallback)
        failure = backup.exception()  # 둘 다 실패: Fallback 의 실패가 요청의 실패
        capture_failure(failure)
        raise failure
    finally:
        for task in (first, backup):
            if task is not None and not task.done():
                task.cancel()  # 늦은 쪽은 취소 (시도 스팬은 upstream_timeout 으로 닫힘)
                await asyncio.gather(task, return_exceptions=True)
        observability.note(attempts=primary["attempts"] + second["attempts"], primary_attempts=primary["attempts"])


def capture_failure(exc: BaseException) -> None:
    """/chat 이 5xx 로 끝나는 업스트림 실패 하나 = Sentry 이벤트 하나."""
    if error_type(exc) not in ("internal_error", "content_blocked") and observability.in_request():
        observability.capture_upstream_failure(exc, structlog.contextvars.get_contextvars().get("request_id"))
# STARTER
# # TODO 4 (lesson §3 '서킷 브레이커와 Fallback'): pybreaker.CircuitBreaker(CIRCUIT_FAIL_MAX, CIRCUIT_RESET_SECONDS)로
# # 주 모델의 시도를 감싸고, 주 모델이 실패하거나(재시도 뒤) 시간이 넘거나 회로가 열려 있으면 FALLBACK_MODEL 을 남은
# # 시간으로 부르는 answer_with_fallback(llm, messages) -> (답, 답한 모델) 을 만드세요. 메트릭 llm_fallbacks_total.
# END SOLUTION
# BEGIN SOLUTION


def is_truncated(reply) -> bool:
    """MAX_OUTPUT_TOKENS 에서 잘린 답 (lesson §14): finish_reason MAX_TOKENS."""
    return str((reply.response_metadata or {}).get("finish_reason") or "").upper() == "MAX_TOKENS"


def cacheable(reply, answered_by: str, primary: str) -> bool:
    """캐시에 둘 답: 주 모델(primary: LLM_MODEL, 변형이나 카나리의 모델)의 답(Fallback 의 답은 아님), 비지 않았고, 거절이
    아니고, 잘리지 않은 답. 오류는 여기까지 오지 않습니다."""
    if is_truncated(reply):  # 잘린 답은 절대 (lesson §14): 다음에 물으면 다시 업스트림에
        return False
    return answered_by == primary and bool(reply.text.strip()) and not quality.is_refusal(reply.text)


async def answer_cached(llm, message: str, route: "Route | None" = None):
    """응답 캐시와 요청 합치기 (lesson §11). 돌려주는 값: (답, 답한 모델, 캐시 결과 "hit" | "miss" | "coalesced").
    캐시가 꺼져 있으면(CACHE_TTL_SECONDS=0) 06단계 1부 그대로 answer_with_fallback 이고 캐시 결과는 None.

    hit: 업스트림 호출도, 토큰과 비용 기록도 없음. miss: 이 요청이 업스트림에 묻고(합치기의 leader), 답이 cacheable 이면
    캐시에 둠. coalesced: 같은 질문이 진행 중이라 그 답을 함께 받음 (실패도 함께 받고, 캐시에는 아무것도 두지 않음)."""
    route = route or default_route(llm)  # A/B 변형, 카나리 (lesson §15, §16): 그 모델과 프롬프트로 묻고, 키에도
    messages = [SystemMessage(route.system_prompt), HumanMessage(message)]
    cache, coalescer = app.state.cache, app.state.coalescer
    if not cache.enabled:
        reply, answered_by = await answer_with_fallback(route.llm, messages, route.model)
        return reply, answered_by, None
    key = caching.cache_key(route.model, route.prompt_version, message)
    hit = await cache.get(key)
    if hit is not None:
        telemetry.record_cache("hit")
        observability.note(cache="hit", model=hit["model"], prompt_version=route.prompt_version, attempts=0)
        return AIMessage(content=hit["response"], usage_metadata=hit["usage"]), hit["model"], "hit"

    async def ask_upstream():
        reply, answered_by = await answer_with_fallback(route.llm, messages, route.model)
        if cacheable(reply, answered_by, route.model):
            usage = reply.usage_metadata or {}
            await cache.set(key, {"response": reply.text, "model": answered_by,
                                  "prompt_version": route.prompt_version,
                                  "usage": {k: int(usage.get(k, 0)) for k in ("input_tokens", "output_tokens",
                                                                               "total_tokens")}})
        return reply, answered_by

    state = "coalesced" if key in coalescer.in_flight else "miss"
    telemetry.record_cache(state)
    observability.note(cache=state)
    if state == "coalesced":
        observability.note(model=route.model, prompt_version=route.prompt_version, attempts=0)
    (reply, answered_by), _ = await coalescer.run(key, ask_upstream)
    return reply, answered_by, state
# STARTER
# # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): answer_cached(llm, message) -> (답, 답한 모델, "hit"|"miss"|"coalesced")
# # 를 만드세요. 키 = caching.cache_key(LLM_MODEL, PROMPT_VERSION, 질문). 캐시에 있으면 업스트림 없이 (hit), 없으면
# # caching.Coalescer 로 같은 질문을 한 호출로 합쳐 answer_with_fallback 을 부르고 (miss, 함께 기다린 요청은 coalesced),
# # 주 모델의 비지 않은, 거절이 아닌 답만 캐시에 두세요 (오류, Fallback 의 답, 거절, 빈 답은 절대 두지 않음).
# # 메트릭 telemetry.record_cache(결과), 로그 줄의 cache. CACHE_TTL_SECONDS=0 이면 answer_with_fallback 그대로 (결과 None).
# # TODO 20 (lesson §14 '토큰 예산'): 잘린 답(finish_reason MAX_TOKENS)도 절대 캐시에 두지 마세요.
# END SOLUTION
# BEGIN SOLUTION


def answer_budget() -> dict:
    """토큰 예산 (lesson §14): 답하는 모델(주, Fallback, 카나리, 변형)의 클라이언트에 넘길 인자. 판정 모델은 아님
    (판정의 JSON 이 잘리면 점수를 읽을 수 없음). None 이면 모델의 기본값."""
    return {"max_output_tokens": settings.max_output_tokens, "thinking_budget": settings.thinking_budget}


def answer_client(model: str) -> ChatGoogleGenerativeAI:
    """답하는 모델의 클라이언트 하나: 주 모델과 같은 키, 주소, 시간 초과, 재시도 없음(invoke_llm 이 함), 토큰 예산."""
    client = ChatGoogleGenerativeAI(
        model=model,
        api_key=settings.google_api_key,
        base_url=settings.google_gemini_base_url,
        timeout=settings.llm_timeout_seconds,
        max_retries=1,
        client_args={"event_hooks": {"request": [observability.add_upstream_headers]}},
        **answer_budget(),
    )
    return client


@dataclass(frozen=True)
class Route:
    """질문 하나가 갈 곳 (lesson §15, §16): 주 모델과 그 클라이언트, 시스템 프롬프트, A/B 변형, 카나리 역할."""

    llm: object
    model: str
    prompt_version: str
    system_prompt: str
    variant: str | None = None  # A/B 실험이 켜져 있을 때만
    role: str | None = None  # 카나리가 켜져 있을 때만: "canary" | "baseline"


def default_route(llm, role: str | None = None) -> Route:
    """실험도 카나리도 없는 /chat 의 길: LLM_MODEL 과 PROMPT_VERSION."""
    return Route(llm=llm, model=settings.llm_model, prompt_version=settings.prompt_version,
                 system_prompt=SYSTEM_PROMPT, role=role)


async def choose_route(llm, user: str) -> Route:
    """실험이 켜져 있으면 사용자의 변형 (experiments.assign: 해시라서 같은 사용자는 늘 같은 변형), 카나리가 켜져
    있으면 요청의 CANARY_SHARE 만 카나리 모델로. 둘 다 꺼져 있으면 LLM_MODEL 과 PROMPT_VERSION 그대로."""
    if settings.ab_experiment:
        name = experiments.assign(settings.ab_experiment, user, settings.ab_variants)
        variant = settings.ab_variants[name]
        model = variant.model or settings.llm_model
        return Route(llm=app.state.variant_llms.get(name, llm), model=model, prompt_version=variant.prompt_version,
                     system_prompt=VARIANT_PROMPTS[name], variant=name)
    gate = app.state.canary
    if gate.enabled:
        if await gate.should_route():
            return Route(llm=app.state.canary_llm, model=settings.canary_model, prompt_version=settings.prompt_version,
                         system_prompt=SYSTEM_PROMPT, role="canary")
        telemetry.set_canary_active(not await gate.rolled_back())  # 다른 복제본의 롤백도 게이지에
        return default_route(llm, role="baseline")
    return default_route(llm)


async def record_outcome(route: Route, ok: bool) -> None:
    """카나리 판정에 드는 결과 하나 (lesson §16): ok = 보낸 모델이 답함. 결과마다 규칙을 보고, 나쁘면 롤백."""
    if route.role is None:
        return
    gate = app.state.canary
    gate.record(route.role, ok)
    telemetry.record_canary(route.role, ok)
    reason = await gate.check()
    if reason is not None:  # 이 복제본이 롤백을 일으킴 (다른 복제본은 Redis 의 상태를 읽고 카나리로 보내지 않음)
        telemetry.record_canary_rollback(reason)


async def answer_routed(req: ChatRequest, llm, response: Response, user: str) -> ChatResponse:
    """질문 하나의 길 전체 = /chat 과 /chat/batch 의 항목 하나 (lesson §13): 변형과 카나리 고르기 (§15, §16) ->
    answer_one (캐시, 재시도, Fallback, 토큰 예산, 응답 id, 메트릭) -> 카나리 결과, 실험 메트릭, 헤더.
    실패는 ApiError (/chat 은 그 JSON 으로 답하고, 배치는 그 항목의 결과로 둠)."""
    route = await choose_route(llm, user)
    if route.variant is not None:
        observability.note(experiment=settings.ab_experiment, variant=route.variant)
        response.headers["X-Variant"] = route.variant
    if route.role is not None:
        observability.note(canary=route.role == "canary")
    try:
        answer = await answer_one(req, route.llm, response, route)
    except ApiError as exc:
        if exc.status_code >= 500:  # 업스트림 오류로 끝남 (422 content_blocked 는 모델 탓이 아님: 결과로 세지 않음)
            await record_outcome(route, ok=False)
        raise
    if not answer.cached:  # 캐시의 답과 합친 답은 모델을 부르지 않았음: 결과가 아님
        await record_outcome(route, ok=not answer.fallback)  # Fallback 이 살린 카나리 요청도 카나리의 실패
    if route.role == "canary":
        response.headers["X-Canary"] = "true"
    if route.variant is not None:
        cost = None if answer.cached else telemetry.call_cost(answer.model, answer.usage.input_tokens,
                                                              answer.usage.output_tokens)
        telemetry.record_experiment(settings.ab_experiment, route.variant, cost)
    return answer


async def judge_routed(question: str, answer: str, model: str, route: Route) -> None:
    """판정 하나 (lesson §7) + 그 점수를 A/B 변형(§15)와 카나리 역할(§16)에도."""
    score = await judge_answer(question, answer, model)
    if score is None:
        return
    if route.variant is not None:
        telemetry.record_experiment_judge(settings.ab_experiment, route.variant, score)
    if route.role is not None and model == route.model:  # Fallback 이 낸 답의 점수는 카나리 모델의 점수가 아님
        app.state.canary.record_score(route.role, score)
        reason = await app.state.canary.check()
        if reason is not None:
            telemetry.record_canary_rollback(reason)


def schedule_judge_routed(question: str, answer: str, model: str, route: Route) -> None:
    """schedule_judge 와 같이 백그라운드 작업으로 (요청의 로그 줄은 바꾸지 않음)."""
    task = asyncio.create_task(judge_routed(question, answer, model, route), context=observability.background_context())
    app.state.judge_tasks.add(task)
    task.add_done_callback(app.state.judge_tasks.discard)
# STARTER
# # TODO 20 (lesson §14 '토큰 예산'): answer_budget() -> {"max_output_tokens": MAX_OUTPUT_TOKENS, "thinking_budget":
# # THINKING_BUDGET} 를 답하는 모델의 클라이언트(주, Fallback, 카나리)에 넘기세요 (판정 모델은 아님).
# # TODO 22 (lesson §15 'A/B 테스트'): 질문 하나가 갈 곳(Route: 모델, 클라이언트, 프롬프트, 변형)을 고르는
# # choose_route(llm, user) 를 만드세요: experiments.assign(AB_EXPERIMENT, user, AB_VARIANTS) 의 변형.
# # 캐시의 키에도 변형의 모델과 프롬프트 버전을. 헤더 X-Variant, 로그 줄의 experiment, variant, 메트릭
# # telemetry.record_experiment (답마다, 새로 낸 비용과 함께), 판정 점수도 변형별로.
# # TODO 25 (lesson §16 '카나리 모델 업데이트'): 카나리가 켜져 있으면 await canary.should_route() 로 CANARY_MODEL 에,
# # 결과(ok = 보낸 모델이 답함, 실패 = 5xx 로 끝남 또는 Fallback 이 답함)를 record(role, ok) 와
# # telemetry.record_canary 에, 결과마다 await check() (롤백이면 telemetry.record_canary_rollback). 헤더 X-Canary: true,
# # 로그 줄의 canary.
# # TODO 19 (lesson §13 '배치 처리'): 이 길 전체를 /chat 과 /chat/batch 가 함께 쓰는 함수 하나로 (복사하지 말 것).
# END SOLUTION


# BEGIN SOLUTION
async def judge_answer(question: str, answer: str, answer_model: str) -> int | None:
# STARTER
# # TODO 22 (lesson §15 'A/B 테스트'): 판정 점수를 돌려주게 하세요 (-> int | None).
# async def judge_answer(question: str, answer: str, answer_model: str) -> None:
# END SOLUTION
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
    # BEGIN SOLUTION
    telemetry.record_judge(answer_model, score)
    return score
    # STARTER
    # # TODO 22 (lesson §15 'A/B 테스트'): 점수를 돌려주세요 (변형별, 카나리 역할별 점수에 씀).
    # telemetry.record_judge(answer_model, score)
    # END SOLUTION


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
        # BEGIN SOLUTION
        **answer_budget(),  # 토큰 예산 (lesson §14): max_output_tokens, thinking_budget
        # STARTER
        # # TODO 20 (lesson §14 '토큰 예산'): 답의 토큰 상한과 사고 토큰 상한 (answer_budget()).
        # END SOLUTION
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
    # BEGIN SOLUTION
    # 06단계: Fallback 모델 클라이언트 (주 모델과 같은 키와 주소, 재시도는 invoke_llm 이), 한도, 공유 응답 id, 준비 상태.
    app.state.fallback_llm = answer_client(settings.fallback_model or settings.llm_model)
    app.state.limiter = resilience.RateLimiter(settings.rate_limit, settings.redis_url)
    app.state.shared_responses = resilience.SharedResponses(settings.redis_url)
    app.state.in_flight = 0
    app.state.ready = True
    watch_sigterm(app)
    # STARTER
    # # TODO 8 (lesson §6, §8): 시작할 때 Fallback 클라이언트, resilience.RateLimiter, resilience.SharedResponses,
    # # 동시 처리 수(in_flight)와 준비 상태(ready)를 만드세요.
    # END SOLUTION
    # BEGIN SOLUTION
    app.state.cache = caching.ResponseCache(settings.cache_ttl_seconds, settings.cache_max_entries, settings.redis_url)
    app.state.coalescer = caching.Coalescer()
    # STARTER
    # # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): 시작할 때 caching.ResponseCache(CACHE_TTL_SECONDS, CACHE_MAX_ENTRIES,
    # # REDIS_URL) 와 caching.Coalescer() 를 만드세요.
    # END SOLUTION
    # BEGIN SOLUTION
    # 06단계 2부: LLM_MODEL 과 다른 모델을 쓰는 A/B 변형의 클라이언트 (lesson §15), 카나리와 그 클라이언트 (§16).
    app.state.variant_llms = {name: answer_client(v.model) for name, v in settings.ab_variants.items()
                              if settings.ab_experiment and v.model and v.model != settings.llm_model}
    app.state.canary = canary.Canary(
        settings.canary_model, settings.canary_share, min_requests=settings.canary_min_requests,
        window_seconds=settings.canary_window_seconds, max_error_increase=settings.canary_max_error_increase,
        max_score_drop=settings.canary_max_score_drop, redis_url=settings.redis_url)
    app.state.canary_llm = answer_client(settings.canary_model) if settings.canary_model else None
    telemetry.set_canary_active(app.state.canary.enabled and not await app.state.canary.rolled_back())
    # STARTER
    # # TODO 22 (lesson §15 'A/B 테스트'): 다른 모델을 쓰는 변형마다 클라이언트 하나 (answer_client(모델)).
    # # TODO 25 (lesson §16 '카나리 모델 업데이트'): canary.Canary(CANARY_MODEL, CANARY_SHARE, ...설정, REDIS_URL) 과
    # # 카나리 모델의 클라이언트를 만들고, 게이지 llm_canary_active 를 켜세요.
    # END SOLUTION
    yield
    # BEGIN SOLUTION
    app.state.ready = False  # 새 요청은 받지 않을 복제본: /ready 가 503 (uvicorn 은 진행 중인 요청을 이미 끝냈음)
    # STARTER
    # # TODO 10 (lesson §8 '우아한 종료와 롤링 재시작'): 종료가 시작되면 /ready 가 503 을 내게 하세요.
    # END SOLUTION
    # 종료: 남은 판정 작업을 기다린 뒤(각 작업은 타임아웃과 시도 횟수로 끝이 있음) 클라이언트를 닫습니다.
    if app.state.judge_tasks:
        await asyncio.gather(*app.state.judge_tasks, return_exceptions=True)
    await judge_llm.aclose()
    await app.state.llm.aclose()
    # BEGIN SOLUTION
    await app.state.fallback_llm.aclose()
    await app.state.limiter.aclose()
    await app.state.shared_responses.aclose()
    # STARTER
    # # TODO 10 (lesson §8): Fallback 클라이언트와 한도 저장소(Redis 연결)도 닫으세요.
    # END SOLUTION
    # BEGIN SOLUTION
    await app.state.cache.aclose()
    # STARTER
    # # TODO 17 (lesson §11): 캐시의 Redis 연결도 닫으세요.
    # END SOLUTION
    # BEGIN SOLUTION
    for client in (*app.state.variant_llms.values(), app.state.canary_llm):
        if client is not None:
            await client.aclose()
    await app.state.canary.aclose()
    # STARTER
    # # TODO 22, 25 (lesson §15, §16): 변형과 카나리의 클라이언트, 카나리의 Redis 연결도 닫으세요.
    # END SOLUTION
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
# BEGIN SOLUTION


def client_keys() -> list[bytes]:
    """받을 키들: SERVICE_API_KEY 와 SERVICE_API_KEYS (쉼표로 구분). 키 하나 = 한도를 따로 세는 클라이언트 하나."""
    extra = settings.service_api_keys.get_secret_value().split(",") if settings.service_api_keys else []
    return [k.strip().encode() for k in [settings.service_api_key.get_secret_value(), *extra] if k.strip()]


# STARTER
# # TODO 6 (lesson §5 'API 키별 Rate Limiting'): SERVICE_API_KEYS 의 키도 받으세요 (키 하나 = 클라이언트 하나).
# END SOLUTION


async def require_api_key(api_key: Annotated[str | None, Depends(api_key_header)]) -> None:
    # BEGIN SOLUTION
    expected = client_keys()
    # STARTER
    # # TODO 6 (lesson §5): SERVICE_API_KEYS 의 키도 받으세요 (모든 키와 상수 시간 비교).
    # expected = settings.service_api_key.get_secret_value()
    # END SOLUTION
    # 상수 시간 비교: 맞은 글자 수에 따라 응답 시간이 달라지지 않게 합니다.
    # BEGIN SOLUTION
    if api_key is None or not any([secrets.compare_digest(api_key.encode(), key) for key in expected]):
    # STARTER
    # # TODO 6 (lesson §5): 모든 키와 비교하세요 (any 에 리스트를 넘겨 맞는 키를 찾아도 끝까지 비교).
    # if api_key is None or not secrets.compare_digest(api_key.encode(), expected.encode()):
    # END SOLUTION
        raise ApiError(401, "unauthorized", "X-API-Key 헤더가 없거나 올바르지 않습니다.")
# BEGIN SOLUTION


async def rate_limit(request: Request, response: Response, api_key: Annotated[str | None, Depends(api_key_header)],
                     _: Annotated[None, Depends(require_api_key)]) -> None:
    """API 키별 한도 (인증 뒤에): 넘으면 429 rate_limited + Retry-After + RateLimit 헤더. 성공 응답에도 RateLimit."""
    decision = await request.app.state.limiter.hit(api_key)
    enforce(decision, response)


def enforce(decision: resilience.Decision | None, response: Response) -> None:
    """한도 판정을 응답으로: 넘었으면 429, 아니면 RateLimit 헤더. None = 저장소 장애 (fail open)."""
    if decision is None:  # 한도 저장소 장애: fail open (README '한도 저장소가 죽으면')
        return
    if not decision.allowed:
        telemetry.record_ratelimit_rejection()
        raise ApiError(429, "rate_limited",
                       f"이 API 키의 요청 한도({settings.rate_limit})를 넘었습니다. Retry-After 초 뒤에 다시 시도하세요.",
                       headers={"Retry-After": str(decision.reset_seconds), **decision.headers()})
    response.headers.update(decision.headers())


async def in_flight_slot(request: Request):
    """복제본 하나가 동시에 처리하는 /chat 은 MAX_IN_FLIGHT 개까지: 넘으면 줄 세우지 않고 바로 503 overloaded
    (줄을 서면 데드라인을 넘긴 뒤에야 실패합니다). 다른 복제본이나 잠시 뒤에 다시 시도하라고 Retry-After: 1."""
    state = request.app.state
    if state.in_flight >= settings.max_in_flight:
        telemetry.record_shed()
        raise ApiError(503, "overloaded", "요청이 너무 많습니다. 잠시 뒤에 다시 시도하세요.", headers={"Retry-After": "1"})
    state.in_flight += 1
    try:
        yield
    finally:
        state.in_flight -= 1


def watch_sigterm(app: FastAPI) -> None:
    """SIGTERM 을 받는 순간 /ready 를 503 으로 (uvicorn 의 처리기는 그대로 불러 진행 중인 요청을 끝내고 멈춤)."""
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def on_sigterm(signum, frame):
        app.state.ready = False
        previous(signum, frame)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # 메인 스레드가 아님 (테스트 클라이언트): 건너뜀
        pass


# STARTER
# # TODO 6 (lesson §5 'API 키별 Rate Limiting'): 인증 뒤에 키별 한도를 재는 의존성 rate_limit 을 만드세요
# # (429 rate_limited + Retry-After + RateLimit-Policy/RateLimit 헤더, 성공 응답에도 RateLimit).
# # TODO 7 (lesson §6 '동시성 한도와 부하 차단'): MAX_IN_FLIGHT 를 넘는 /chat 은 바로 503 overloaded + Retry-After: 1.
# # TODO 10 (lesson §8 '우아한 종료와 롤링 재시작'): SIGTERM 을 받으면 준비 상태를 내리세요 (uvicorn 의 처리기도 부름).
# END SOLUTION


@app.get("/health", response_model=HealthResponse, summary="헬스 체크 (LLM 을 부르지 않음)")
async def health() -> HealthResponse:
    return HealthResponse(status="ok", model=settings.llm_model, prompt_version=settings.prompt_version)


# BEGIN SOLUTION
@app.get("/ready", summary="준비 상태 (로드 밸런서와 Kubernetes readinessProbe 용, LLM 을 부르지 않음)",
         responses={503: {"model": ErrorResponse, "description": "종료 중 (shutting_down)"}})
async def ready(request: Request) -> JSONResponse:
    if not getattr(request.app.state, "ready", False):
        return error_response(503, "shutting_down", "이 복제본은 종료 중입니다. 다른 복제본으로 보내세요.")
    return JSONResponse({"status": "ready"})


# STARTER
# # TODO 10 (lesson §8 '우아한 종료와 롤링 재시작'): GET /ready: 평소 200 {"status": "ready"}, 종료가 시작되면 503.
# END SOLUTION
@app.get("/metrics", summary="Prometheus 메트릭 (키 없음, 비밀 값 없음)", include_in_schema=False)
async def metrics() -> Response:
    # Prometheus 는 키 없이 긁어 갑니다: 여기에는 질문, 사용자 id, 키 같은 값이 절대 들어가지 않습니다.
    body, content_type = telemetry.metrics_body()
    return Response(content=body, media_type=content_type)


@app.post(
    "/chat",
    response_model=ChatResponse,
    summary="LLM 에게 질문하기",
    # BEGIN SOLUTION
    dependencies=[Depends(require_api_key), Depends(rate_limit), Depends(in_flight_slot)],
    # STARTER
    # # TODO 6, 7 (lesson §5, §6): 인증 뒤에 키별 한도(rate_limit)와 동시 처리 한도(in_flight_slot).
    # dependencies=[Depends(require_api_key)],
    # END SOLUTION
    responses={
        401: {"model": ErrorResponse, "description": "X-API-Key 가 없거나 틀림"},
        # BEGIN SOLUTION
        422: json_error_doc("요청 검증 실패 (FastAPI 의 {\"detail\": [...]}), 또는 안전 필터가 답을 막음 (content_blocked)",
                            validation=True),
        429: {"model": ErrorResponse, "description": "API 키별 한도 초과 (rate_limited), Retry-After 와 RateLimit 헤더"},
        # STARTER
        # # TODO 6 (lesson §5): 새 응답(422 content_blocked, 429 rate_limited)을 문서에 더하세요.
        # END SOLUTION
        413: {"model": ErrorResponse, "description": "요청 본문이 64 KiB 초과"},
        502: {"model": ErrorResponse, "description": "LLM 서버 오류 (5xx)"},
        503: {"model": ErrorResponse, "description": "LLM 호출 한도 초과 (429), Retry-After 헤더 포함"},
        504: {"model": ErrorResponse, "description": "LLM 응답 시간 초과"},
        500: {"model": ErrorResponse, "description": "예상하지 못한 서버 오류"},
    },
)
# BEGIN SOLUTION
async def chat(req: ChatRequest, llm: Annotated[ChatGoogleGenerativeAI, Depends(get_llm)], response: Response,
               api_key: Annotated[str | None, Depends(api_key_header)]) -> ChatResponse:
    """질문 하나. 일은 answer_routed (변형, 카나리) -> answer_one 이 합니다: POST /chat/batch 의 항목도 같은 길 (§13)."""
    return await answer_routed(req, llm, response, experiments.user_key(req.user_id, api_key or ""))


async def answer_one(req: ChatRequest, llm, response: Response, route: Route | None = None) -> ChatResponse:
    """질문 하나의 답. route = 주 모델과 프롬프트 (A/B 변형, 카나리: 없으면 LLM_MODEL 과 PROMPT_VERSION).
    실패는 ApiError (/chat 이 내는 상태 코드와 JSON). response 에는 X-Fallback, X-Cache 헤더를 적습니다."""
    route = route or default_route(llm)
# STARTER
# # TODO 4 (lesson §3): 응답 헤더 X-Fallback 을 쓰려면 response: Response 를 받으세요.
# # TODO 19 (lesson §13 '배치 처리'): 아래 본문을 질문 하나의 함수(answer_one)로 옮기고, /chat 과 /chat/batch 의 항목이
# # 모두 그 함수를 부르게 하세요 (본문을 복사하면 캐시, Fallback, 변형이 한쪽에만 생깁니다).
# async def chat(req: ChatRequest, llm: Annotated[ChatGoogleGenerativeAI, Depends(get_llm)]) -> ChatResponse:
# END SOLUTION
    # 입력 드리프트: 검증을 통과한 모든 질문의 길이 (LLM 이 답하기 전에, 실패한 요청도 입력은 입력).
    telemetry.set_drift(app.state.drift.observe(req.message))
    try:
        # 시스템 지시(프롬프트 버전의 내용)와 사용자 질문을 역할을 나눠 보냅니다.
        # BEGIN SOLUTION
        reply, answered_by, cache_state = await answer_cached(llm, req.message, route)
        # STARTER
        # # TODO 4 (lesson §3 '서킷 브레이커와 Fallback'): answer_with_fallback 으로 (답, 답한 모델)을 받으세요.
        # # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): answer_cached 로 (답, 답한 모델, 캐시 결과)를 받으세요.
        # reply = await invoke_llm(llm, [SystemMessage(SYSTEM_PROMPT), HumanMessage(req.message)], settings.llm_model)
        # END SOLUTION
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
    # BEGIN SOLUTION
    except TimeoutError:  # 요청의 데드라인 (REQUEST_DEADLINE_SECONDS) 이 다 됨
        raise ApiError(504, "upstream_timeout",
                       f"LLM 이 데드라인 {settings.request_deadline_seconds:g}초 안에 답하지 못했습니다.") from None
    except ContentBlocked:  # 다시 물어도 같음: 재시도도 Fallback 도 없이 422
        raise ApiError(422, "content_blocked", "안전 필터가 이 질문의 답을 막았습니다. 질문을 바꿔 보세요.") from None
    except MALFORMED:
        raise ApiError(502, "upstream_malformed", "LLM 이 읽을 수 없는 답을 보냈습니다. 잠시 후 다시 시도하세요.") from None
    except ModelInvalidRequestError:  # 업스트림 400: 이 서비스의 설정(키, 모델 이름) 문제. 재시도하지 않음
        raise ApiError(502, "upstream_bad_request", "LLM 이 요청을 거절했습니다 (서비스 설정 문제).") from None
    except (CircuitOpen, httpx2.TransportError, httpx.TransportError):  # 열린 회로, 연결 실패
        raise ApiError(503, "upstream_unavailable", "LLM 을 잠시 쓸 수 없습니다. 잠시 후 다시 시도하세요.",
                       headers={"Retry-After": str(math.ceil(settings.circuit_reset_seconds))}) from None
    # STARTER
    # # TODO 5 (lesson §4 '업스트림의 이상한 답'): 새 실패를 문서에 적은 JSON 으로: 데드라인 504 upstream_timeout,
    # # SAFETY 422 content_blocked, 빈 답/깨진 본문 502 upstream_malformed, 업스트림 400 502 upstream_bad_request,
    # # 열린 회로(Fallback 없음) 503 upstream_unavailable. 500 은 절대 나가면 안 됩니다.
    # END SOLUTION
    usage = reply.usage_metadata or {}
    # BEGIN SOLUTION
    response_id = await app.state.shared_responses.issue(route.variant)  # REDIS_URL 이 있으면 모든 복제본이 아는 id
    fallback = answered_by != route.model
    observability.note(fallback=fallback)
    if fallback:
        response.headers["X-Fallback"] = answered_by
    # STARTER
    # # TODO 9 (lesson §7): 응답 id 를 공유 저장소(resilience.SharedResponses)에.
    # # TODO 4 (lesson §3): Fallback 이 답했으면 표시하세요: 헤더 X-Fallback: <모델>, 로그 줄의 fallback.
    # response_id = app.state.responses.issue()
    # END SOLUTION
    # BEGIN SOLUTION
    if cache_state is not None:  # 캐시가 켜져 있을 때만 (CACHE_TTL_SECONDS=0 이면 헤더 없음)
        response.headers["X-Cache"] = cache_state
    # STARTER
    # # TODO 17 (lesson §11 '응답 캐시와 요청 합치기'): 응답 헤더 X-Cache: hit | miss | coalesced.
    # END SOLUTION
    # BEGIN SOLUTION
    truncated = is_truncated(reply)  # MAX_OUTPUT_TOKENS 에서 잘린 답 (lesson §14): 표시하고 세되, 캐시에는 두지 않음
    if truncated:
        telemetry.record_truncated(answered_by)
    observability.note(truncated=truncated, prompt_version=route.prompt_version)
    # STARTER
    # # TODO 20 (lesson §14 '토큰 예산'): 잘린 답(finish_reason MAX_TOKENS)을 표시하세요: 응답의 truncated, 로그 줄의
    # # truncated, 메트릭 telemetry.record_truncated(답한 모델).
    # END SOLUTION
    telemetry.record_answer(settings.llm_model, refused=quality.is_refusal(reply.text))
    # BEGIN SOLUTION
    # 판정은 업스트림이 새로 낸 답만 (캐시의 답은 이미 판정 기회가 있었음: 같은 답을 다시 채점하면 비용만 듦)
    if cache_state in (None, "miss") and random.random() < settings.judge_sample_rate:
        schedule_judge_routed(req.message, reply.text, answered_by, route)  # 점수는 변형과 카나리 역할에도
    # STARTER
    # # TODO 17 (lesson §11): 캐시의 답(hit, coalesced)은 판정하지 마세요.
    # if random.random() < settings.judge_sample_rate:  # 0 이면 판정하지 않음, 1 이면 모두
    #     schedule_judge(req.message, reply.text)
    # END SOLUTION
    # 질문과 답은 로그에 쓰지 않고, 설정이 있을 때만 암호화해 저장합니다 (lesson §4).
    prompt_store.append(settings.log_dir, PROMPT_FERNET, structlog.contextvars.get_contextvars().get("request_id", ""),
                        req.message, reply.text)
    return ChatResponse(
        response=reply.text,
        # BEGIN SOLUTION
        model=answered_by,
        fallback=fallback,
        cached=cache_state in ("hit", "coalesced"),
        # STARTER
        # # TODO 4 (lesson §3): model 은 실제로 답한 모델, fallback 은 Fallback 이 답했는지.
        # model=settings.llm_model,
        # END SOLUTION
        # BEGIN SOLUTION
        truncated=truncated,
        variant=route.variant,
        prompt_version=route.prompt_version,
        # STARTER
        # # TODO 20 (lesson §14): truncated. TODO 22 (lesson §15): 답한 변형과 그 변형의 프롬프트 버전.
        # prompt_version=settings.prompt_version,
        # END SOLUTION
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
    # BEGIN SOLUTION
    dependencies=[Depends(require_api_key), Depends(rate_limit)],
    # STARTER
    # # TODO 6 (lesson §5): /feedback 에도 키별 한도.
    # dependencies=[Depends(require_api_key)],
    # END SOLUTION
    responses={
        401: {"model": ErrorResponse, "description": "X-API-Key 가 없거나 틀림"},
        404: {"model": ErrorResponse, "description": "이 서비스가 낸 response_id 가 아님 (unknown_response_id)"},
        409: {"model": ErrorResponse, "description": "이 답에는 이미 피드백이 있음 (feedback_exists)"},
    },
)
async def feedback(req: FeedbackRequest) -> FeedbackResponse:
    # 검증(422)은 FastAPI 가 FeedbackRequest 로 먼저 합니다: 잘못된 피드백은 어떤 카운터도 바꾸지 않습니다.
    # BEGIN SOLUTION
    outcome, variant = await app.state.shared_responses.claim_variant(req.response_id)
    # STARTER
    # # TODO 9 (lesson §7 '로드 밸런서 뒤의 복제본 두 개'): 다른 복제본이 낸 id 도 받도록 공유 저장소에서.
    # outcome = app.state.responses.claim(req.response_id)
    # END SOLUTION
    if outcome == quality.IssuedResponses.UNKNOWN:
        raise ApiError(404, "unknown_response_id",
                       "이 서비스가 낸 response_id 가 아닙니다 (최근 10 000 개의 답만 기억합니다).")
    if outcome == quality.IssuedResponses.EXISTS:
        raise ApiError(409, "feedback_exists", "이 답에는 이미 피드백이 있습니다.")
    telemetry.record_feedback(req.rating, req.score)  # comment 는 메트릭에 넣지 않습니다
    # BEGIN SOLUTION
    if settings.ab_experiment and variant in settings.ab_variants:  # 이 답을 낸 변형에 (설정에 있는 이름만: 라벨이 유한)
        telemetry.record_experiment_feedback(settings.ab_experiment, variant, req.rating)
    # STARTER
    # # TODO 22 (lesson §15 'A/B 테스트'): 이 답을 낸 변형의 피드백으로도 세세요 (telemetry.record_experiment_feedback):
    # # 응답 id 를 낼 때 변형을 함께 적고(shared_responses.issue(variant)), 받을 때 claim_variant 로 읽음.
    # END SOLUTION
    return FeedbackResponse(response_id=req.response_id, rating=req.rating, recorded=True)
# BEGIN SOLUTION


def stream_error_code(exc: BaseException, got_chunks: bool) -> str:
    """스트림이 시작된 뒤의 실패 = event: error 의 code (/chat 의 코드와 같음). 조각을 받은 뒤 끊긴 업스트림 스트림
    (httpx2.RemoteProtocolError 등 연결 오류)은 upstream_malformed, 첫 조각 전의 연결 실패는 upstream_unavailable."""
    if isinstance(exc, TimeoutError):  # 첫 조각의 데드라인 (asyncio.timeout)
        return "upstream_timeout"
    if isinstance(exc, (httpx2.TransportError, httpx.TransportError)) and not isinstance(exc, UPSTREAM_TIMEOUTS):
        cut = got_chunks or isinstance(exc, (httpx2.RemoteProtocolError, httpx.RemoteProtocolError))
        return "upstream_malformed" if cut else "upstream_unavailable"
    code = error_type(exc)
    return "upstream_error" if code == "internal_error" else code


STREAM_ERROR_MESSAGES = {
    "upstream_rate_limited": "LLM 호출 한도를 넘었습니다. 잠시 후 다시 시도하세요.",
    "upstream_timeout": "LLM 이 데드라인 안에 첫 조각을 보내지 않았습니다.",
    "content_blocked": "안전 필터가 이 질문의 답을 막았습니다. 질문을 바꿔 보세요.",
    "upstream_malformed": "LLM 의 스트림이 중간에 끊겼거나 읽을 수 없는 답이었습니다. 다시 시도하세요.",
    "upstream_unavailable": "LLM 을 잠시 쓸 수 없습니다. 잠시 후 다시 시도하세요.",
    "upstream_bad_request": "LLM 이 요청을 거절했습니다 (서비스 설정 문제).",
}


@app.post(
    "/chat/stream",
    response_class=EventSourceResponse,
    summary="LLM 에게 질문하고 답을 조각마다 받기 (Server-Sent Events)",
    dependencies=[Depends(require_api_key), Depends(rate_limit), Depends(in_flight_slot)],
    responses={
        200: {"description": "text/event-stream: event delta {\"text\"} 여러 개, 끝에 done (response_id, model, "
                             "prompt_version, usage) 또는 error ({\"error\": {\"code\", \"message\"}}) 하나"},
        # 오류는 스트림이 시작하기 전에 JSON 으로 (422 는 FastAPI 의 기본 검증 오류 문서 그대로)
        401: json_error_doc("X-API-Key 가 없거나 틀림"),
        413: json_error_doc("요청 본문이 64 KiB 초과"),
        429: json_error_doc("API 키별 한도 초과 (rate_limited)"),
        503: json_error_doc("동시 처리 한도 초과 (overloaded)"),
    },
)
async def chat_stream(req: ChatRequest, llm: Annotated[ChatGoogleGenerativeAI, Depends(get_llm)]
                      ) -> AsyncIterable[ServerSentEvent]:
    """스트리밍 (lesson §12): 업스트림의 조각을 오는 대로 `event: delta` 로 (모아 두지 않음), 끝에 `event: done`.
    주 모델에 한 번만 묻습니다: 재시도, Fallback, 캐시 없음 (조각을 보낸 뒤 다시 시도하면 글이 두 번 나감).
    첫 조각은 REQUEST_DEADLINE_SECONDS 안에 와야 합니다. 실패하면 `event: error` 하나를 보내고 끝 (조용히 끝나지 않음).
    클라이언트가 떠나면 이 생성기가 취소되고, aclosing 이 업스트림 스트림(astream -> HTTP 연결)을 닫습니다."""
    telemetry.set_drift(app.state.drift.observe(req.message))
    model = settings.llm_model
    observability.note(model=model, prompt_version=settings.prompt_version, stream=True, attempts=1)
    started = time.perf_counter()
    span = tracer.start_span(f"{telemetry.OPERATION} {model}", kind=SpanKind.CLIENT,
                             attributes={"gen_ai.operation.name": telemetry.OPERATION,
                                         "gen_ai.provider.name": telemetry.PROVIDER, "gen_ai.request.model": model})
    message = None  # 지금까지 받은 조각의 합 (AIMessageChunk: 글과 usage_metadata 를 합침)
    ttft = None
    try:
        async with contextlib.aclosing(llm.astream([SystemMessage(SYSTEM_PROMPT), HumanMessage(req.message)])) as upstream:
            chunks = aiter(upstream)
            # 첫 조각까지만 데드라인 (yield 를 감싸지 않음). 이 스팬이 현재 스팬인 동안 나가는 HTTP 요청에 traceparent.
            with trace.use_span(span, end_on_exit=False):
                async with asyncio.timeout(settings.request_deadline_seconds):
                    chunk = await anext(chunks, None)
            while chunk is not None:
                message = chunk if message is None else message + chunk
                if chunk.text:
                    if ttft is None:  # 첫 글 조각: 사용자가 기다린 시간 (time to first token)
                        ttft = time.perf_counter() - started
                        telemetry.record_ttft(model, ttft)
                        observability.note(ttft_ms=round(ttft * 1000, 1))
                    yield ServerSentEvent(event="delta", data={"text": chunk.text})
                chunk = await anext(chunks, None)
        if message is None:
            raise UpstreamMalformed("empty stream")
        check_reply(message)  # SAFETY 로 막힌 답, 글이 없는 답
    except (Exception, asyncio.CancelledError) as exc:
        code = stream_error_code(exc, got_chunks=message is not None)
        span.set_attribute("error.type", code)
        span.set_status(StatusCode.ERROR, type(exc).__name__)
        telemetry.record_operation(model, time.perf_counter() - started, error_type=code)
        if isinstance(exc, asyncio.CancelledError):  # 클라이언트가 떠남: 보낼 곳이 없음
            observability.note(error_code="client_disconnected")
            raise
        observability.note(error_code=code)
        capture_failure(exc)
        yield ServerSentEvent(event="error", data={"error": {"code": code, "message": STREAM_ERROR_MESSAGES.get(
            code, "LLM 서버에서 오류가 발생했습니다. 잠시 후 다시 시도하세요.")}})
        return
    finally:
        span.end()
    telemetry.record_operation(model, time.perf_counter() - started)
    telemetry.record_usage(model, message.usage_metadata)
    usage = message.usage_metadata or {}
    tokens = {k: int(usage.get(k, 0)) for k in ("input_tokens", "output_tokens", "total_tokens")}
    span.set_attributes({"gen_ai.usage.input_tokens": tokens["input_tokens"],
                         "gen_ai.usage.output_tokens": tokens["output_tokens"]})
    observability.note(input_tokens=tokens["input_tokens"], output_tokens=tokens["output_tokens"],
                       cost_usd=telemetry.call_cost(model, tokens["input_tokens"], tokens["output_tokens"]))
    telemetry.record_answer(model, refused=quality.is_refusal(message.text))
    response_id = await app.state.shared_responses.issue()
    prompt_store.append(settings.log_dir, PROMPT_FERNET, structlog.contextvars.get_contextvars().get("request_id", ""),
                        req.message, message.text)
    yield ServerSentEvent(event="done", data={"response_id": response_id, "model": model,
                                              "prompt_version": settings.prompt_version, "usage": tokens})
# STARTER
# # TODO 18 (lesson §12 '스트리밍'): POST /chat/stream 을 만드세요: /chat 과 같은 의존성(키, 한도, 동시 처리 한도)과
# # 본문, response_class=EventSourceResponse, ServerSentEvent 를 yield 하는 생성기. llm.astream 의 조각을 오는 대로
# # event: delta {"text": ...} 로 (모아 두지 말 것), 끝에 event: done {response_id, model, prompt_version, usage}.
# # 첫 조각은 REQUEST_DEADLINE_SECONDS 안에. 실패하면(끊긴 스트림 포함) event: error {"error": {code, message}} 하나.
# # 클라이언트가 떠나면 업스트림 스트림을 닫으세요 (contextlib.aclosing). 메트릭 llm_time_to_first_token_seconds,
# # 토큰과 비용, 로그 줄의 ttft_ms.
# END SOLUTION
# BEGIN SOLUTION


@app.post(
    "/chat/batch",
    response_model=BatchResponse,
    summary="질문 여러 개를 한 번에 (결과는 같은 순서, 실패한 질문은 그 자리에)",
    # 한도는 본문을 검증한 뒤 질문 수만큼 (아래), 동시 처리 한도는 배치 하나에 한 자리.
    dependencies=[Depends(require_api_key), Depends(in_flight_slot)],
    responses={
        200: {"description": "results: 질문마다 {\"ok\": true, ...ChatResponse} 또는 {\"ok\": false, \"error\": {code, "
                             "message}} (code 는 /chat 의 오류 코드). 질문 하나의 실패는 배치를 실패시키지 않음"},
        401: {"model": ErrorResponse, "description": "X-API-Key 가 없거나 틀림"},
        413: {"model": ErrorResponse, "description": "요청 본문이 64 KiB 초과"},
        422: json_error_doc("요청 검증 실패 (FastAPI 의 {\"detail\": [...]}): 질문 0개, BATCH_MAX_ITEMS 초과, 빈 질문 하나라도",
                            validation=True),
        429: {"model": ErrorResponse, "description": "API 키별 한도: 배치는 질문 수만큼 셈, 남은 한도보다 많으면 전체 429"},
        503: {"model": ErrorResponse, "description": "동시 처리 한도 초과 (overloaded)"},
    },
)
async def chat_batch(req: BatchRequest, request: Request, response: Response,
                     llm: Annotated[ChatGoogleGenerativeAI, Depends(get_llm)],
                     api_key: Annotated[str | None, Depends(api_key_header)]) -> BatchResponse:
    """배치 처리 (lesson §13): 질문마다 /chat 과 같은 길(answer_routed: 캐시, 재시도와 데드라인, Fallback, 변형, 카나리,
    토큰 예산)을 LangChain 의 RunnableLambda(...).abatch 로, 한 번에 BATCH_CONCURRENCY 개까지만 업스트림에.
    질문마다 자기 REQUEST_DEADLINE_SECONDS (배치 전체는 최대 ceil(N / BATCH_CONCURRENCY) 데드라인).
    실패한 질문은 그 자리에 {"ok": false, "error"} (return_exceptions=True): 500 은 없습니다.
    요청 로그는 배치에 한 줄 (batch_size, batch_failed): 질문마다의 필드는 적지 않습니다."""
    enforce(await request.app.state.limiter.hit(api_key, cost=len(req.messages)), response)
    user = experiments.user_key(req.user_id, api_key or "")

    async def one(message: str) -> ChatResponse:
        item = ChatRequest(message=message, user_id=req.user_id)
        # 질문마다 자기 context: 질문들의 로그 필드가 배치의 로그 줄에 섞이지 않게 (배치의 줄은 아래의 요약 하나)
        return await asyncio.create_task(answer_routed(item, llm, Response(), user),
                                         context=observability.background_context())

    outcomes = await RunnableLambda(one).abatch(req.messages, config={"max_concurrency": settings.batch_concurrency},
                                                return_exceptions=True)
    results = [batch_result(outcome) for outcome in outcomes]
    failed = sum(1 for r in results if not r.ok)
    telemetry.record_batch(len(results))
    observability.note(batch_size=len(results), batch_failed=failed)
    return BatchResponse(results=results)


def batch_result(outcome: ChatResponse | BaseException) -> BatchAnswer | BatchFailure:
    """질문 하나의 결과: 답, 또는 /chat 이라면 냈을 오류의 code 와 message."""
    if isinstance(outcome, ChatResponse):
        return BatchAnswer(**outcome.model_dump())
    if isinstance(outcome, ApiError):
        return BatchFailure(error=ErrorDetail(code=outcome.code, message=outcome.message))
    logger.error("배치의 질문 하나가 예상하지 못한 오류로 실패했습니다", exc_info=outcome)
    return BatchFailure(error=ErrorDetail(code="internal_error", message="서버 내부 오류가 발생했습니다."))


@app.get("/canary", summary="카나리 모델의 상태 (lesson §16)", dependencies=[Depends(require_api_key)],
         responses={401: {"model": ErrorResponse, "description": "X-API-Key 가 없거나 틀림"}})
async def canary_state(request: Request) -> dict:
    """{"model", "share", "state": "off"|"active"|"rolled_back", "reason", "canary": {requests, errors, error_rate,
    mean_score}, "baseline": {...}}: 이 복제본의 창 (롤백 상태는 REDIS_URL 이 있으면 모든 복제본이 같음)."""
    state = await request.app.state.canary.state()
    telemetry.set_canary_active(state["state"] == "active")
    return state
# STARTER
# # TODO 19 (lesson §13 '배치 처리'): POST /chat/batch 를 만드세요: 인증, 한도는 질문 수만큼
# # (limiter.hit(api_key, cost=len(messages)): 남은 한도보다 많으면 전체 429), 동시 처리 한도는 배치에 한 자리.
# # 질문마다 /chat 과 같은 길(answer_routed)을 RunnableLambda(...).abatch(messages, config={"max_concurrency":
# # BATCH_CONCURRENCY}, return_exceptions=True) 로 (asyncio.gather 는 상한이 없음). 결과는 같은 순서, 실패한 질문은
# # 그 자리에 {"ok": false, "error": {"code", "message"}} (배치 전체를 실패시키지 말 것). 메트릭
# # telemetry.record_batch(질문 수), 로그 줄의 batch_size, batch_failed.
# # TODO 25 (lesson §16 '카나리 모델 업데이트'): GET /canary (서비스 키 필요): await canary.state().
# END SOLUTION
