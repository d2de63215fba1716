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
# TODO 1 (lesson §2 '요청당 JSON 로그 한 줄'): import observability (로그, 요청 ID, 추적, Sentry 설정) 와
# import prompt_store (TODO 7), 그리고 재시도를 직접 돌릴 tenacity (TODO 11) 를 불러오세요.

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
    # TODO 1 (lesson §2 '요청당 JSON 로그 한 줄'): 설정 LOG_DIR (기본 "logs") 와 LOG_LEVEL (기본 "INFO") 을 추가하세요.
    # TODO 7 (lesson §4 '남기면 안 되는 것과 프롬프트 암호화'): 선택 설정 PROMPT_ENCRYPTION_KEYS (SecretStr | None).
    # TODO 14 (lesson §9 'Sentry 오류 추적'): 선택 설정 SENTRY_DSN (SecretStr | None).

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
# TODO 1 (lesson §2 '요청당 JSON 로그 한 줄'): observability.configure_logging(settings.log_dir, settings.log_level)
# TODO 10 (lesson §6 'OpenTelemetry 추적'): TRACER_PROVIDER = observability.tracer_provider() 와 그 tracer.
# TODO 13 (lesson §8 'LangSmith'): observability.hide_langsmith_payloads()
# TODO 14 (lesson §9 'Sentry 오류 추적'): observability.init_sentry(SENTRY_DSN, secrets=[두 키 ...])
# TODO 7 (lesson §4 '남기면 안 되는 것과 프롬프트 암호화'): PROMPT_FERNET = prompt_store.keyring(...)


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
    # TODO 3 (lesson §2 '요청당 JSON 로그 한 줄'): 오류 코드를 로그 줄에: observability.note(error_code=code)
    return JSONResponse(status_code=status_code, content=body.model_dump(), headers=headers)


# Starlette/FastAPI 가 직접 내는 HTTP 오류 (404, 405, 413 ...) 도 같은 모양으로 바꿉니다.
HTTP_ERRORS = {
    404: ("not_found", "요청한 경로가 없습니다."),
    405: ("method_not_allowed", "허용되지 않는 HTTP 메서드입니다."),
    413: ("payload_too_large", f"요청 본문이 너무 큽니다 (최대 {MAX_BODY_BYTES // 1024} KiB)."),
}

# google-genai 3.x 는 기본으로 httpx2 를 씁니다 (GOOGLE_GENAI_HTTP_CLIENT=httpx 이면 httpx).
# 타임아웃은 SDK 가 감싸지 않은 httpx2.ReadTimeout 등으로 올라오므로 둘 다 잡습니다.
UPSTREAM_TIMEOUTS = (httpx2.TimeoutException, httpx.TimeoutException)


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
    if isinstance(exc, ModelRateLimitError):
        return "upstream_rate_limited"
    if isinstance(exc, ServerError):
        return "upstream_error"
    if isinstance(exc, UPSTREAM_TIMEOUTS):
        return "upstream_timeout"
    return "internal_error"


# TODO 11 (lesson §6 'OpenTelemetry 추적'): 재시도를 서비스가 돌리세요: tenacity 의 AsyncRetrying
# (stop_after_attempt(settings.llm_max_attempts), 429/5xx/시간 초과만) 안에서 시도 한 번씩 llm.ainvoke 를 부르고,
# 클라이언트의 재시도는 끕니다 (lifespan 의 max_retries=1). 둘을 겹치면 시도 수가 곱해집니다.
# TODO 12 (lesson §6 'OpenTelemetry 추적'): 시도마다 tracer.start_as_current_span(f"chat {model}") 스팬 하나:
# gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model, 성공하면 gen_ai.usage.input_tokens/output_tokens,
# 실패하면 error.type.
# TODO 3 (lesson §2 '요청당 JSON 로그 한 줄'): observability.note(model=, prompt_version=, attempts=,
# input_tokens=, output_tokens=, cost_usd=) 로 로그 줄의 필드를 채우세요.
# TODO 15 (lesson §9 'Sentry 오류 추적'): 재시도가 모두 끝난 업스트림 실패(upstream_*)는 요청 안에서 한 번만
# observability.capture_upstream_failure(exc, request_id).
async def invoke_llm(llm, messages: list, model: str):
    """LLM 호출 한 번 (재시도는 클라이언트 안에서). 성공이든 실패든 시간을 기록하고, 성공하면 토큰과 비용도."""
    started = time.perf_counter()
    try:
        reply = await llm.ainvoke(messages)
    except Exception as exc:
        telemetry.record_operation(model, time.perf_counter() - started, error_type=error_type(exc))
        raise
    telemetry.record_operation(model, time.perf_counter() - started)
    telemetry.record_usage(model, reply.usage_metadata)
    return reply


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
    telemetry.record_judge(answer_model, score)


def schedule_judge(question: str, answer: str) -> None:
    """판정을 백그라운드 작업으로: 응답을 기다리게 하지 않습니다. 작업은 끝날 때까지 집합에 두어(강한 참조)
    가비지 컬렉션에 사라지지 않게 하고, 종료할 때 lifespan 이 남은 작업을 기다립니다."""
    # TODO 3 (lesson §2 '요청당 JSON 로그 한 줄'): 판정 작업이 요청의 로그 줄을 바꾸지 않게
    # context=observability.background_context() 로 만드세요.
    task = asyncio.create_task(judge_answer(question, answer, settings.llm_model))
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
        # TODO 11 (lesson §6 'OpenTelemetry 추적'): 재시도는 서비스가 돌리므로 max_retries=1 (시도 한 번).
        # TODO 5 (lesson §3 '요청 ID 와 contextvars'): client_args={"event_hooks": {"request": [observability.add_upstream_headers]}}
        max_retries=settings.llm_max_attempts,  # 총 시도 횟수. 빼면 langchain-google-genai 기본값 6
    )
    # 판정 모델 클라이언트: 같은 키와 주소, 결정적인(temperature 0) JSON 답.
    app.state.judge_llm = judge_llm = ChatGoogleGenerativeAI(
        model=settings.judge_model,
        api_key=settings.google_api_key,
        base_url=settings.google_gemini_base_url,
        timeout=settings.llm_timeout_seconds,
        # TODO 11 (lesson §6 'OpenTelemetry 추적'): 판정 클라이언트도 max_retries=1 과 같은 요청 훅.
        max_retries=settings.llm_max_attempts,
        temperature=0,
        response_mime_type="application/json",
    )
    app.state.judge_tasks = set()  # 진행 중인 판정 작업 (강한 참조)
    app.state.responses = quality.IssuedResponses()  # 피드백을 받을 응답 id (최근 10 000 개)
    app.state.drift = quality.InputDrift(settings.drift_window)
    yield
    # 종료: 남은 판정 작업을 기다린 뒤(각 작업은 타임아웃과 시도 횟수로 끝이 있음) 클라이언트를 닫습니다.
    if app.state.judge_tasks:
        await asyncio.gather(*app.state.judge_tasks, return_exceptions=True)
    await judge_llm.aclose()
    await app.state.llm.aclose()
    # TODO 10 (lesson §6 'OpenTelemetry 추적'): 종료할 때 TRACER_PROVIDER.force_flush() 로 남은 스팬을 내보내세요.
    # LangSmith 의 실행도: await asyncio.to_thread(observability.flush_langsmith) (레슨 §8).


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
    # TODO 10 (lesson §6 'OpenTelemetry 추적'): {**telemetry.FASTAPI_TELEMETRY, "tracing": True,
    # "tracer_provider": TRACER_PROVIDER} 로 요청마다 서버 스팬을 만드세요.
    telemetry=telemetry.FASTAPI_TELEMETRY,
)
# TODO 3 (lesson §2 '요청당 JSON 로그 한 줄'): FastAPI 가 만드는 미들웨어 묶음 전체를
# observability.RequestLogMiddleware 로 감싸세요 (app.build_middleware_stack 을 감싸는 함수로 바꾸기).


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


async def require_api_key(api_key: Annotated[str | None, Depends(api_key_header)]) -> None:
    expected = settings.service_api_key.get_secret_value()
    # 상수 시간 비교: 맞은 글자 수에 따라 응답 시간이 달라지지 않게 합니다.
    if api_key is None or not secrets.compare_digest(api_key.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "X-API-Key 헤더가 없거나 올바르지 않습니다.")


@app.get("/health", response_model=HealthResponse, summary="헬스 체크 (LLM 을 부르지 않음)")
async def health() -> HealthResponse:
    return HealthResponse(status="ok", model=settings.llm_model, prompt_version=settings.prompt_version)


@app.get("/metrics", summary="Prometheus 메트릭 (키 없음, 비밀 값 없음)", include_in_schema=False)
async def metrics() -> Response:
    # Prometheus 는 키 없이 긁어 갑니다: 여기에는 질문, 사용자 id, 키 같은 값이 절대 들어가지 않습니다.
    body, content_type = telemetry.metrics_body()
    return Response(content=body, media_type=content_type)


@app.post(
    "/chat",
    response_model=ChatResponse,
    summary="LLM 에게 질문하기",
    dependencies=[Depends(require_api_key)],
    responses={
        401: {"model": ErrorResponse, "description": "X-API-Key 가 없거나 틀림"},
        413: {"model": ErrorResponse, "description": "요청 본문이 64 KiB 초과"},
        502: {"model": ErrorResponse, "description": "LLM 서버 오류 (5xx)"},
        503: {"model": ErrorResponse, "description": "LLM 호출 한도 초과 (429), Retry-After 헤더 포함"},
        504: {"model": ErrorResponse, "description": "LLM 응답 시간 초과"},
        500: {"model": ErrorResponse, "description": "예상하지 못한 서버 오류"},
    },
)
async def chat(req: ChatRequest, llm: Annotated[ChatGoogleGenerativeAI, Depends(get_llm)]) -> ChatResponse:
    # 입력 드리프트: 검증을 통과한 모든 질문의 길이 (LLM 이 답하기 전에, 실패한 요청도 입력은 입력).
    telemetry.set_drift(app.state.drift.observe(req.message))
    try:
        # 시스템 지시(프롬프트 버전의 내용)와 사용자 질문을 역할을 나눠 보냅니다.
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
    usage = reply.usage_metadata or {}
    response_id = app.state.responses.issue()
    telemetry.record_answer(settings.llm_model, refused=quality.is_refusal(reply.text))
    if random.random() < settings.judge_sample_rate:  # 0 이면 판정하지 않음, 1 이면 모두
        schedule_judge(req.message, reply.text)
    # TODO 7 (lesson §4 '남기면 안 되는 것과 프롬프트 암호화'): PROMPT_ENCRYPTION_KEYS 가 있으면 질문과 답을
    # prompt_store.append(settings.log_dir, PROMPT_FERNET, 요청 ID, req.message, reply.text) 로 암호화해 저장하세요.
    return ChatResponse(
        response=reply.text,
        model=settings.llm_model,
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
    dependencies=[Depends(require_api_key)],
    responses={
        401: {"model": ErrorResponse, "description": "X-API-Key 가 없거나 틀림"},
        404: {"model": ErrorResponse, "description": "이 서비스가 낸 response_id 가 아님 (unknown_response_id)"},
        409: {"model": ErrorResponse, "description": "이 답에는 이미 피드백이 있음 (feedback_exists)"},
    },
)
async def feedback(req: FeedbackRequest) -> FeedbackResponse:
    # 검증(422)은 FastAPI 가 FeedbackRequest 로 먼저 합니다: 잘못된 피드백은 어떤 카운터도 바꾸지 않습니다.
    outcome = app.state.responses.claim(req.response_id)
    if outcome == quality.IssuedResponses.UNKNOWN:
        raise ApiError(404, "unknown_response_id",
                       "이 서비스가 낸 response_id 가 아닙니다 (최근 10 000 개의 답만 기억합니다).")
    if outcome == quality.IssuedResponses.EXISTS:
        raise ApiError(409, "feedback_exists", "이 답에는 이미 피드백이 있습니다.")
    telemetry.record_feedback(req.rating, req.score)  # comment 는 메트릭에 넣지 않습니다
    return FeedbackResponse(response_id=req.response_id, rating=req.rating, recorded=True)
