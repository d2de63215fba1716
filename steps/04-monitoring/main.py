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
# TODO 1 (lesson §1 '골든 시그널'): 메트릭 모듈을 불러오세요: import telemetry (뒤의 TODO 에서 quality,
#   asyncio, random, time, typing.Literal, fastapi.responses.Response 도 씁니다).

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
    # TODO 9 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): 설정 JUDGE_MODEL (기본 "gemini-3.5-flash-judge")과
    #   JUDGE_SAMPLE_RATE (0~1, 기본 0.1, 0 이면 판정하지 않음)를 추가하세요.
    # TODO 10 (lesson §7 '드리프트 (PSI)'): 설정 DRIFT_WINDOW (정수, 10 이상, 기본 200)를 추가하세요.

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
    # TODO 7 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): 선택 필드 user_id (영문, 숫자, _ . : @ - 로
    #   1~64자, 기본 None)를 받으세요. 메트릭 라벨로는 쓰지 않습니다.

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
    # TODO 7 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): response_id 필드를 추가하세요.


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
# TODO 7 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): POST /feedback 의 요청 본문 FeedbackRequest
#   (모르는 필드는 422; response_id: 32자리 소문자 16진수, rating: "up" 또는 "down", score: 선택 1~5 정수,
#   comment: 선택 1000자 이하)와 응답 FeedbackResponse (response_id, rating, recorded) 를 만드세요.


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


# TODO 4 (lesson §4 'GenAI 시맨틱 컨벤션으로 LLM 호출 계측'): LLM 호출 한 번을 재는 invoke_llm(llm, messages, model) 을
#   만드세요: time.perf_counter() 로 잰 시간을 telemetry.record_operation(model, 초) 로, 실패하면
#   error_type= 에 클라이언트가 받는 오류 코드(upstream_rate_limited, upstream_error, upstream_timeout,
#   internal_error)를 넣어 기록하고 예외는 그대로 다시 던집니다. 성공하면 telemetry.record_usage(model,
#   reply.usage_metadata) 로 토큰과 비용을 기록합니다 (TODO 5, 6).
# TODO 9 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): 답 하나를 판정 모델(settings.judge_model)로
#   채점하는 judge_answer() 와, 그것을 asyncio.create_task 로 백그라운드에서 돌리는 schedule_judge() 를 만드세요.
#   판정 메시지는 quality.judge_messages(), 점수는 quality.parse_judge(), 기록은 telemetry.record_judge().
#   판정이 실패해도 클라이언트는 오류를 받지 않습니다.


@asynccontextmanager
async def lifespan(app: FastAPI):
    # 클라이언트는 시작할 때 하나만 만들고 모든 요청이 같이 씁니다 (연결 풀 재사용).
    # 설정은 모두 Settings 에서 직접 넘깁니다: 클라이언트는 .env 파일을 읽지 않습니다.
    app.state.llm = ChatGoogleGenerativeAI(
        model=settings.llm_model,
        api_key=settings.google_api_key,
        base_url=settings.google_gemini_base_url,  # None 이면 Google (또는 환경 변수 GOOGLE_GEMINI_BASE_URL)
        timeout=settings.llm_timeout_seconds,  # 시도 한 번의 상한 (초)
        max_retries=settings.llm_max_attempts,  # 총 시도 횟수. 빼면 langchain-google-genai 기본값 6
    )
    # TODO 7 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): app.state.responses = quality.IssuedResponses()
    # TODO 9 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): 판정 모델 클라이언트 app.state.judge_llm
    #   (model=settings.judge_model, 나머지는 위와 같게)과 진행 중인 판정 작업의 집합 app.state.judge_tasks
    # TODO 10 (lesson §7 '드리프트 (PSI)'): app.state.drift = quality.InputDrift(settings.drift_window)
    yield
    # TODO 9 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): 종료할 때 남은 판정 작업을 기다리고
    #   (asyncio.gather) 판정 클라이언트를 닫으세요.
    await app.state.llm.aclose()


app = FastAPI(
    title="LLM 채팅 서비스",
    version="0.2.0",
    description="Gemini 를 감싼 채팅 API. `/chat` 은 `X-API-Key` 헤더가 필요합니다.",
    lifespan=lifespan,
    # FastAPI 의 내장 본문 크기 제한: 선언된 Content-Length 가 크면 본문을 읽기 전에, 헤더가 없는
    # (chunked) 본문은 읽는 동안 센 바이트가 넘는 순간 413 을 냅니다. JSON 파싱 전에 거절됩니다.
    max_body_size=MAX_BODY_BYTES,
    # TODO 1 (lesson §1 '골든 시그널'): telemetry=telemetry.FASTAPI_TELEMETRY 를 넘겨 FastAPI 가 요청마다
    #   http.server.request.duration 을 telemetry.py 의 MeterProvider 로 기록하게 하세요.
)


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
# TODO 2 (lesson §2 'Prometheus 데이터 모델과 이름 규칙'): GET /metrics 를 만드세요. X-API-Key 없이
#   telemetry.metrics_body() 의 본문과 Content-Type 을 그대로 돌려줍니다 (fastapi.responses.Response).


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
    # TODO 10 (lesson §7 '드리프트 (PSI)'): 질문을 app.state.drift.observe() 에 넣고 그 PSI 를
    #   telemetry.set_drift() 로 기록하세요.
    try:
        # 시스템 지시(프롬프트 버전의 내용)와 사용자 질문을 역할을 나눠 보냅니다.
        # TODO 4 (lesson §4 'GenAI 시맨틱 컨벤션으로 LLM 호출 계측'): llm.ainvoke 대신 invoke_llm(llm, 메시지,
        #   settings.llm_model) 로 불러 호출마다 시간, 실패 종류, 토큰, 비용이 기록되게 하세요.
        reply = await llm.ainvoke([SystemMessage(SYSTEM_PROMPT), HumanMessage(req.message)])
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
    # TODO 7 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): response_id = app.state.responses.issue()
    # TODO 8 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): 답마다 telemetry.record_answer(모델,
    #   refused=quality.is_refusal(답)) 로 답 수와 거절을 세세요 (거절률 = refused="true" 의 비율).
    # TODO 9 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): JUDGE_SAMPLE_RATE 의 비율로 뽑은 답을
    #   schedule_judge() 로 판정하세요 (응답을 기다리게 하지 않음).
    return ChatResponse(
        response=reply.text,
        model=settings.llm_model,
        prompt_version=settings.prompt_version,
        usage=Usage(
            input_tokens=usage.get("input_tokens", 0),
            output_tokens=usage.get("output_tokens", 0),
            total_tokens=usage.get("total_tokens", 0),
        ),
        # TODO 7 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): response_id=response_id
    )
# TODO 7 (lesson §6 '품질: 피드백, 거절률, LLM-as-a-judge'): POST /feedback (X-API-Key 필요) 을 만드세요.
#   잘못된 본문 422 (FeedbackRequest), 이 서비스가 내지 않은 id 404 unknown_response_id, 같은 id 에 두 번째
#   피드백 409 feedback_exists (app.state.responses.claim()), 받아들이면 telemetry.record_feedback(rating, score)
#   후 200 {"response_id", "rating", "recorded": true}.
