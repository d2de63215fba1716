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
# TODO 1 (lesson §2 '프롬프트와 모델 버전을 설정으로'): 필요한 것을 import 하세요
#   (pathlib.Path, langchain_core.messages 의 SystemMessage 와 HumanMessage).

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
    # TODO 1 (lesson §2 '프롬프트와 모델 버전을 설정으로'): PROMPT_VERSION 설정(기본 "v2")을 추가하세요.
    #   prompts/<버전>.txt 가 그 버전의 시스템 프롬프트입니다. 버전 이름에는 영문, 숫자, . _ - 만 받으세요.

    @field_validator("google_api_key", "service_api_key")
    @classmethod
    def ascii_only(cls, value: SecretStr) -> SecretStr:
        # 키는 HTTP 헤더로 전달되므로 ASCII 여야 합니다 (한글 자리표시자를 그대로 쓰면 모든 요청이 실패).
        if not value.get_secret_value().isascii():
            raise ValueError("키에는 ASCII 문자만 쓸 수 있습니다 (HTTP 헤더로 전달됨)")
        return value


settings = Settings()
# TODO 1 (lesson §2 '프롬프트와 모델 버전을 설정으로'): settings.prompt_version 으로 prompts/<버전>.txt 를
#   읽어 SYSTEM_PROMPT 에 두세요. 파일이 없으면 시작할 때 한국어 오류로 멈추게 하세요.


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
    # TODO 3 (lesson §2 '프롬프트와 모델 버전을 설정으로'): 응답에 prompt_version 필드를 추가하세요.
    usage: Usage


class ErrorDetail(BaseModel):
    code: str = Field(description="기계가 읽는 오류 코드 (예: unauthorized, upstream_timeout)")
    message: str = Field(description="사람이 읽는 한국어 설명")


class ErrorResponse(BaseModel):
    """모든 오류 응답의 모양: {"error": {"code": ..., "message": ...}}"""

    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str = Field(description="항상 ok")
    model: str = Field(description="설정된 모델 이름")
    # TODO 3 (lesson §2 '프롬프트와 모델 버전을 설정으로'): prompt_version 필드를 추가하세요.


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
    yield
    await app.state.llm.aclose()


app = FastAPI(
    title="LLM 채팅 서비스",
    version="0.2.0",
    description="Gemini 를 감싼 채팅 API. `/chat` 은 `X-API-Key` 헤더가 필요합니다.",
    lifespan=lifespan,
    # FastAPI 의 내장 본문 크기 제한: 선언된 Content-Length 가 크면 본문을 읽기 전에, 헤더가 없는
    # (chunked) 본문은 읽는 동안 센 바이트가 넘는 순간 413 을 냅니다. JSON 파싱 전에 거절됩니다.
    max_body_size=MAX_BODY_BYTES,
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
    # TODO 3 (lesson §2 '프롬프트와 모델 버전을 설정으로'): 어떤 모델과 프롬프트 버전이 배포되어 있는지
    #   /health 로 보이게 하세요: prompt_version=settings.prompt_version
    return HealthResponse(status="ok", model=settings.llm_model)


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
    try:
        # TODO 2 (lesson §2 '프롬프트와 모델 버전을 설정으로'): 질문만 보내지 말고 시스템 프롬프트를
        #   SystemMessage 로, 질문을 HumanMessage 로 함께 보내세요.
        reply = await llm.ainvoke(req.message)
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
    return ChatResponse(
        response=reply.text,
        model=settings.llm_model,
        # TODO 3 (lesson §2 '프롬프트와 모델 버전을 설정으로'): prompt_version=settings.prompt_version
        usage=Usage(
            input_tokens=usage.get("input_tokens", 0),
            output_tokens=usage.get("output_tokens", 0),
            total_tokens=usage.get("total_tokens", 0),
        ),
    )
